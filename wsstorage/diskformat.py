"""The blob store's on-disk format: file names, the FORMAT file, records.

Kept apart from ``blobstore`` so the layout (documented in
``docs/storage-format.md``) is readable in one place and a future format
version can be recognised before anything else touches the disk.
"""

from __future__ import annotations

import base64
import hashlib
import json
import math
import os
import struct
import time
from collections.abc import Callable
from typing import Any

import attrs
import crc32c

from wsstorage.errors import BadRequest, StorageError
from wsstorage.records import STORE_ID_RE

FORMAT_NAME = "wsfs-blobstore"
#: Version 2 added checksums kept inside a sealed record (``sums``), with
#: no ``.sums`` file; version 3 the bytes of a small blob kept inside its
#: sealed record too (``data``), with no ``.data`` file; version 4 the put
#: journal (``wsstorage.putjournal``): an acknowledged put's record file
#: may be durable only through ``journal-a``/``journal-b`` until their
#: next checkpoint, so code that ignores them (version 3) must not open a
#: directory after a crash of version 4.  Older stores are upgraded when
#: opened.
FORMAT_VERSION = 4
#: Versions of a data directory this code reads.
READABLE_VERSIONS = (1, 2, 3, 4)
#: Version a record (``.meta``) is written with: records did not change in
#: version 4 of the directory, so they still say 3.
RECORD_VERSION = 3
#: Versions of a record this code reads.
RECORD_VERSIONS = (1, 2, 3)
DEFAULT_BLOCK_SIZE = 64 * 1024
MAX_BLOCK_SIZE = 1024 * 1024
MIN_BLOCK_SIZE = 512
#: Upper bound on a writer's encoded meta record: it is metadata, not data.
MAX_META_BYTES = 64 * 1024
#: Bytes of a record read first: its whole JSON line, but for a large
#: writer's meta.  stat, list and open need no more (not a small blob's
#: data, which follows the line).
RECORD_HEAD = 4096

FORMAT_FILE = "FORMAT"
#: The store's identity (``StoreIdentity``): which data directory this is,
#: so that front ends notice a server that comes back on another one (a
#: wiped or replaced disk).  A file of its own, not a field of FORMAT:
#: code that knows nothing of it neither reads nor rewrites it (an older
#: version upgrading FORMAT would drop a field it does not know, and so
#: the identity), and it changes nothing about how blobs are read, so it
#: needs no new FORMAT version.
IDENTITY_FILE = "IDENTITY"
#: The cluster the store is bound to (``ClusterBinding``): a store serves
#: one catalog only, so that a second catalog pointed at it by mistake
#: (same secret, other database) never takes its blobs for orphans.  A
#: file of its own, written once (atomically, durably) by the ``bind`` op,
#: for the same reason as IDENTITY: older code neither reads nor rewrites it.
CLUSTER_FILE = "CLUSTER"
LOCK_FILE = "LOCK"
BLOBS_DIR = "blobs"
DATA_SUFFIX = ".data"
SUMS_SUFFIX = ".sums"
META_SUFFIX = ".meta"
TMP_SUFFIX = ".tmp"

#: One checksum entry per block: bytes covered in the block, then CRC32C.
ENTRY = struct.Struct(">II")
#: Most checksum entries a sealed record carries itself (``MetaRecord.sums``):
#: 4 MiB of 64 KiB blocks, 512 bytes of entries.
INLINE_SUMS_MAX = 64
#: Largest blob whose bytes a ``put`` keeps in its sealed record
#: (``MetaRecord.data``): one file created and one sync (the put journal's;
#: two, record and directory, without it) instead of two files and three
#: syncs.
INLINE_DATA_MAX = 64 * 1024

STATE_OPEN = "open"
STATE_SEALED = "sealed"


class FormatError(StorageError):
    """The data directory holds an unknown or damaged on-disk format."""

    code = "format"


def crc(data: bytes | memoryview, value: int = 0) -> int:
    """CRC32C of ``data``, continuing from ``value``."""
    return crc32c.crc32c(data, value=value)


#: How many fan-out directories ``blobs/`` holds: ``00`` .. ``ff``.
FAN_OUT = 256


#: ``json.dumps(value, sort_keys=True)`` with one encoder made once:
#: ``dumps`` with an option builds a new one per call, and every small
#: put encodes its meta and its record.
_sorted_json = json.JSONEncoder(sort_keys=True).encode


def prefix_dir(blob_id: str) -> str:
    """The fan-out directory of a blob: two hex digits of a hash of its id.

    Hashing (not the id's first letters) spreads ids that share a prefix,
    such as ``inode42-0``, ``inode42-1``, evenly over 256 directories.
    """
    return hashlib.sha256(blob_id.encode()).hexdigest()[:2]


@attrs.frozen
class BlobPaths:
    """The three files of one blob, and the directory that holds them."""

    directory: str
    data: str
    sums: str
    meta: str

    @classmethod
    def of(cls, root: str, blob_id: str) -> BlobPaths:
        d = os.path.join(root, BLOBS_DIR, prefix_dir(blob_id))
        base = os.path.join(d, blob_id)
        return cls(d, base + DATA_SUFFIX, base + SUMS_SUFFIX, base + META_SUFFIX)

    @staticmethod
    def tomb(path: str) -> str:
        """A new name, in the same directory, for a file about to be
        unlinked: renamed to it under a lock, it is unlinked after (a
        multi-GB ``.data`` may take long).  It ends in ``TMP_SUFFIX``, so a
        start after a crash removes it, and holds a random token, so it is
        no blob's file nor any record's temp file."""
        return f"{path}.{os.urandom(8).hex()}{TMP_SUFFIX}"

    def remove_all(self, remove: Callable[[str], object] = os.unlink) -> list[str]:
        """Apply ``remove`` (an unlink, or scrub's rename into quarantine)
        to the record, then ``.data``, then ``.sums``, skipping any that is
        missing (FileNotFoundError); return the paths it removed.

        Record first: a removal cut short leaves files without a record,
        which the store's next start deletes, never a record without its
        data.  Any other error stops it, the files after left in place."""
        removed: list[str] = []
        for path in (self.meta, self.data, self.sums):
            try:
                remove(path)
            except FileNotFoundError:
                continue
            removed.append(path)
        return removed


@attrs.frozen
class MetaRecord:
    """The ``.meta`` JSON file: everything about a blob except its bytes."""

    blob_id: str
    state: str
    epoch: int
    block_size: int
    size: int
    meta: dict[str, Any] = attrs.field(factory=dict)
    #: The checksum entries of a sealed blob that has no ``.sums`` file
    #: (``ENTRY`` after ``ENTRY``, as that file would hold them), or None.
    sums: bytes | None = None
    #: The bytes of a sealed blob that has no ``.data`` file (format 3;
    #: ``sums`` then holds their checksums), or None.  Encoded raw after
    #: the record's JSON line, not in it (``encode``).  None too in a
    #: record decoded from its JSON line alone (``decode`` with ``total``).
    data: bytes | None = None
    #: How many bytes of data the record holds (``data``'s length), or
    #: None: the blob has a ``.data`` file.
    data_size: int | None = None

    def encode(self) -> bytes:
        """The record's bytes: one line of JSON (``json.dumps`` never writes
        a raw newline), then, when it holds the blob's bytes, those bytes
        as they are (the JSON says how many in ``data_size``).

        A record decoded from its JSON line alone (``data_size`` set,
        ``data`` None) cannot be encoded: written back, it would lose its
        ``data_size`` and so claim a ``.data`` file the blob never had (its
        bytes gone).  ValueError, before anything is written."""
        if self.data_size != (None if self.data is None else len(self.data)):
            raise ValueError(
                f"record of {self.blob_id} holds {self.data_size} bytes of data, "
                "not loaded: read it whole (with its data) to write it again"
            )
        fields = {
            "format": RECORD_VERSION,
            "blob_id": self.blob_id,
            "state": self.state,
            "epoch": self.epoch,
            "block_size": self.block_size,
            "size": self.size,
            "meta": self.meta,
        }
        if self.sums is not None:
            fields["sums"] = base64.b64encode(self.sums).decode()
        if self.data is not None:
            fields["data_size"] = len(self.data)
        header = _sorted_json(fields).encode() + b"\n"
        return header if self.data is None else header + self.data

    @classmethod
    def decode(cls, raw: bytes, total: int | None = None) -> MetaRecord:
        """Parse a record.  Only its first line is JSON; the bytes after it
        (a small blob's data) are sliced off, never parsed, so damage in
        them is a checksum mismatch when they are read, not a record that
        fails to decode.

        ``total``: the record file's size, when ``raw`` is only its start
        (holding the whole JSON line): the data is then left unread
        (``data`` None, ``data_size`` checked against what follows)."""
        newline = raw.find(b"\n")
        if total is not None and newline < 0:
            raise ValueError("a record's start must hold its whole JSON line")
        header = raw if newline < 0 else raw[:newline]
        trailer = None
        if total is None:
            trailer = b"" if newline < 0 else raw[newline + 1 :]
            total = len(raw)
        trailer_size = 0 if newline < 0 else total - newline - 1
        try:
            d = json.loads(header)
            if d["format"] not in RECORD_VERSIONS:
                raise FormatError(f"blob record of unknown format {d['format']!r}")
            sums = d.get("sums")
            data_size = d.get("data_size")
            if data_size is None and trailer_size:
                raise FormatError("blob record with bytes after its JSON")
            if data_size is not None and (type(data_size) is not int or data_size != trailer_size):
                raise FormatError("blob record whose inline data is not data_size bytes")
            rec = cls(
                blob_id=str(d["blob_id"]),
                state=str(d["state"]),
                epoch=int(d["epoch"]),
                block_size=int(d["block_size"]),
                size=int(d["size"]),
                meta=dict(d["meta"]),
                sums=None if sums is None else base64.b64decode(sums, validate=True),
                data=None if data_size is None else trailer,
                data_size=data_size,
            )
        except FormatError:
            raise
        except (ValueError, KeyError, TypeError) as e:
            raise FormatError(f"damaged blob record: {e}") from e
        if rec.state not in (STATE_OPEN, STATE_SEALED):
            raise FormatError(f"blob record with unknown state {rec.state!r}")
        if rec.sums is not None and (
            d["format"] < 2 or rec.state != STATE_SEALED or not _sums_cover(rec)
        ):
            raise FormatError("blob record with malformed inline checksums")
        if rec.data_size is not None and (
            d["format"] < 3
            or rec.sums is None
            or rec.data_size != rec.size
            or rec.size > INLINE_DATA_MAX
        ):
            raise FormatError("blob record with malformed inline data")
        return rec


def _sums_cover(rec: MetaRecord) -> bool:
    """Whether a record's inline checksum entries are exactly those of its
    sealed size: one per block, whole blocks but the last, at most
    INLINE_SUMS_MAX.  Fewer would read as a torn tail of a sealed blob,
    more would be trusted for blocks that do not exist."""
    assert rec.sums is not None
    bs, size = rec.block_size, rec.size
    if bs <= 0 or size < 0 or len(rec.sums) % ENTRY.size:
        return False
    covered = [n for n, _crc in ENTRY.iter_unpack(rec.sums)]
    blocks = -(-size // bs)
    if len(covered) != blocks or blocks > INLINE_SUMS_MAX:
        return False
    return not blocks or (
        all(n == bs for n in covered[:-1]) and covered[-1] == size - (blocks - 1) * bs
    )


def encode_meta(meta: object) -> dict[str, Any]:
    """Check a writer's meta record (a small JSON-able dict) and return it."""
    if not isinstance(meta, dict):
        raise BadRequest("meta must be a JSON object")
    try:
        raw = _sorted_json(meta)
    except (TypeError, ValueError) as e:
        raise BadRequest(f"meta is not JSON-able: {e}") from e
    if len(raw) > MAX_META_BYTES:
        raise BadRequest(f"meta record larger than {MAX_META_BYTES} bytes")
    return json.loads(raw)


def format_record(block_size: int) -> bytes:
    return (
        json.dumps(
            {"format": FORMAT_NAME, "version": FORMAT_VERSION, "block_size": block_size},
            sort_keys=True,
        ).encode()
        + b"\n"
    )


@attrs.frozen
class StoreIdentity:
    """Which data directory a store is: a random id given when the store
    was created (or, for a store made before identities, when it was
    first opened by code that knows them), and that moment.

    Like an HDFS datanode's storage ID or a Ceph OSD's fsid: a server that
    answers with another id than it had is on another directory, and holds
    none of the blobs it held before (docs/storage-format.md)."""

    store_id: str
    #: Unix time (seconds) the id was given.
    created: float

    @classmethod
    def new(cls, now: float | None = None) -> StoreIdentity:
        return cls(os.urandom(16).hex(), time.time() if now is None else now)

    def encode(self) -> bytes:
        return (
            json.dumps(
                {"store_id": self.store_id, "created": self.created}, sort_keys=True
            ).encode()
            + b"\n"
        )

    @classmethod
    def decode(cls, raw: bytes, path: str) -> StoreIdentity:
        """Parse the IDENTITY file; FormatError if it is not one.  Never
        replaced by a new id silently: a store whose identity changed is
        taken for a wiped one, and its replicas for lost."""
        try:
            d = json.loads(raw)
            store_id, created = d["store_id"], float(d["created"])
        except (ValueError, KeyError, TypeError) as e:
            raise FormatError(f"{path}: not a wsfs store IDENTITY file ({e})") from e
        if not isinstance(store_id, str) or not STORE_ID_RE.fullmatch(store_id):
            raise FormatError(f"{path}: store id {store_id!r} is not 32 hex digits")
        if not math.isfinite(created):
            raise FormatError(f"{path}: creation time {created!r} is not a time")
        return cls(store_id, created)


@attrs.frozen
class ClusterBinding:
    """The cluster (catalog) a store is bound to: the catalog's random id,
    given by the first front end that used the store (the ``bind`` op), and
    when.  A front end of another catalog is refused deletes and uses the
    store for nothing (docs/storage-format.md, docs/maintenance.md)."""

    cluster_id: str
    #: Unix time (seconds) the store was bound.
    bound: float

    def encode(self) -> bytes:
        fields = {"cluster_id": self.cluster_id, "bound": self.bound}
        return json.dumps(fields, sort_keys=True).encode() + b"\n"

    @classmethod
    def decode(cls, raw: bytes, path: str) -> ClusterBinding:
        """Parse the CLUSTER file; FormatError if it is not one.  Never
        replaced silently: an unreadable binding taken for none would let
        any catalog claim the store and sweep its blobs."""
        try:
            d = json.loads(raw)
            cluster_id, bound = d["cluster_id"], float(d["bound"])
        except (ValueError, KeyError, TypeError) as e:
            raise FormatError(f"{path}: not a wsfs store CLUSTER file ({e})") from e
        if not isinstance(cluster_id, str) or not STORE_ID_RE.fullmatch(cluster_id):
            raise FormatError(f"{path}: cluster id {cluster_id!r} is not 32 hex digits")
        if not math.isfinite(bound):
            raise FormatError(f"{path}: binding time {bound!r} is not a time")
        return cls(cluster_id, bound)


def parse_format(raw: bytes, path: str) -> tuple[int, int]:
    """Validate the FORMAT file; return the store's block size and version."""
    try:
        d = json.loads(raw)
        name, version, block_size = d["format"], d["version"], int(d["block_size"])
    except (ValueError, KeyError, TypeError) as e:
        raise FormatError(f"{path}: not a wsfs blob store FORMAT file ({e})") from e
    if name != FORMAT_NAME:
        raise FormatError(f"{path}: format {name!r} is not {FORMAT_NAME!r}")
    if version not in READABLE_VERSIONS:
        raise FormatError(
            f"{path}: on-disk format version {version!r} is not supported "
            f"(this wsstorage reads versions {', '.join(map(str, READABLE_VERSIONS))})"
        )
    check_block_size(block_size)
    return block_size, version


def check_block_size(block_size: int) -> int:
    if not (MIN_BLOCK_SIZE <= block_size <= MAX_BLOCK_SIZE) or block_size % MIN_BLOCK_SIZE:
        raise FormatError(f"block size {block_size} is not a multiple of 512 in 512..1 MiB")
    return block_size
