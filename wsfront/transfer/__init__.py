"""The protocol-independent transfer layer (see docs/architecture.md)."""
