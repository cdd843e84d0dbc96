"""Checks of a request's fields, shared by the wire server and the
in-process client (``wsstorage.inprocess``), so that both refuse the same
values with the same error."""

from __future__ import annotations

from typing import Any

from wsstorage.errors import BadRequest


def int_field(req: dict[str, Any], name: str, *, optional: bool = False) -> int | None:
    """``req[name]`` if it is a non-negative int (not a bool); None if it
    is missing or None and ``optional``; else BadRequest."""
    value = req.get(name)
    if value is None and optional:
        return None
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise BadRequest(f"field {name!r} must be a non-negative integer")
    return value
