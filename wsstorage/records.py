"""Plain records exchanged between the storage tier and its callers."""

from __future__ import annotations

import math
import re
from typing import Any

import attrs

from wsstorage.errors import BadRequest

#: Blob ids are opaque tokens chosen by the front end; never paths.
BLOB_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,127}$")

#: Blob states as reported by stat and list.
OPEN = "open"  # being written; ``durable`` bytes are fsync'd
SEALED = "sealed"  # committed: immutable, fully fsync'd
INCOMPLETE = "incomplete"  # found unsealed after a restart: a torn tail may follow ``durable``


def check_blob_id(blob_id: object) -> str:
    """Return ``blob_id`` if it is a valid id, else raise BadRequest."""
    if not isinstance(blob_id, str) or not BLOB_ID_RE.match(blob_id):
        raise BadRequest(f"invalid blob id {blob_id!r}")
    return blob_id


@attrs.frozen
class BlobInfo:
    """What a storage server knows of one blob.

    ``size`` is the number of bytes stored; ``durable`` how many of them are
    known to be fsync'd (equal to ``size`` once sealed).  ``meta`` is the
    writer's record (inode, extent index, owner) kept beside the blob so a
    lost catalog can be rebuilt.
    """

    blob_id: str
    size: int
    durable: int
    state: str
    epoch: int
    meta: dict[str, Any] = attrs.field(factory=dict)

    @property
    def sealed(self) -> bool:
        return self.state == SEALED


@attrs.frozen
class Health:
    """A storage server's answer to a health probe."""

    name: str
    free_bytes: int
    total_bytes: int
    blobs: int
    active_streams: int
    version: int
    #: Why the server takes no new blobs now (its disk is read-only, its
    #: data directory gone...), or None; older servers never say.
    problem: str | None = None
    #: Free space the server keeps back from new blobs (wsstorage.reserve);
    #: 0 from older servers.
    reserve_bytes: int = 0
    #: Which data directory the server runs on (its store's random id,
    #: ``diskformat.StoreIdentity``) and when that was created (Unix
    #: time), or None: older servers never say.  A front end that knew
    #: another id for the server knows its blobs are gone.
    store_id: str | None = None
    store_created: float | None = None
    #: The cluster (catalog) the store is bound to (``wsstorage.binding``),
    #: or None: unbound, or a server too old to bind.
    cluster_id: str | None = None


#: A store id (``diskformat.StoreIdentity``): 32 lowercase hex digits, 128
#: random bits, in the IDENTITY file and in health answers alike.
STORE_ID_RE = re.compile(r"[0-9a-f]{32}")


def cluster_of(body: dict[str, Any]) -> str | None:
    """``cluster_id`` of a health answer, or None if it names none (an
    unbound store, an older server) or something that is not an id."""
    value = body.get("cluster_id")
    return value if isinstance(value, str) and STORE_ID_RE.fullmatch(value) else None


def store_identity(body: dict[str, Any]) -> dict[str, Any]:
    """``store_id`` and ``store_created`` of a health answer, as ``Health``
    takes them: None for a server that does not send them (older ones) or
    sends something else, so that no junk reaches a front end's catalog."""
    store_id, created = body.get("store_id"), body.get("store_created")
    if not isinstance(store_id, str) or not STORE_ID_RE.fullmatch(store_id):
        return {"store_id": None, "store_created": None}
    ok = (
        isinstance(created, int | float)
        and not isinstance(created, bool)
        and math.isfinite(created)
    )
    return {"store_id": store_id, "store_created": float(created) if ok else None}
