"""The catalog: metadata every front end shares (namespace, upload sessions,
blobs, users, storage nodes, admin jobs), on SQLite or PostgreSQL.

``open_catalog(reactor, url)`` is the entry point; see ``_interfaces.ICatalog``
and ``docs/catalog.md``.
"""

from wsfront.catalog._interfaces import ICatalog
from wsfront.catalog.names import split_path

__all__ = ["ICatalog", "open_catalog", "split_path"]


def open_catalog(reactor, url: str, **kwargs) -> ICatalog:
    """Open (and migrate) the catalog at ``url``: ``sqlite:///abs/path`` or
    ``postgresql://user@host/db``.  Migration runs in the calling thread:
    call this at start-up, before serving."""
    from wsfront.catalog.opening import open_catalog as _open

    return _open(reactor, url, **kwargs)
