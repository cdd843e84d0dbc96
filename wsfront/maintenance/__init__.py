"""Background work that keeps every file at full strength (issue 11).

Repair, garbage collection, fsck and the admin-job runner live here, apart
from the transfer layer: they read the catalog and drive storage servers to
copy (``copy_from``) and delete, but never carry file bytes themselves.
See docs/maintenance.md for what each does and its safety rules.
"""
