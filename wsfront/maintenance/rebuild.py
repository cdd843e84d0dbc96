"""Rebuilding a lost catalog from the metadata records beside the blobs.

Every blob a front end writes carries a meta record (``inode``, ``path``,
``owner``, ``upload``, ``file_offset``: see ``Transfers._open_session``).
From the sealed blobs of every storage server this module works out each
file's committed content and replays it into an empty catalog through the
ordinary upload API, so the rebuilt catalog obeys every invariant the
catalog enforces.

How a file is put back together:

* blobs are grouped by inode, then by upload; within an upload each
  takeover raised the epoch, so its sealed blobs in epoch order are its
  segments as they were written, and they are replayed in that order with
  ``restart_at`` (a segment that starts below where the previous one ended
  is a rollback: the catalog cuts the earlier segments by reference, as it
  did the first time; a placeholder blob id stands for the segment that was
  dropped unsealed, and is left collectable);
* an upload whose first segment starts above 0 resumed a committed file
  (APPE, REST + STOR): its base is another upload of the same inode that
  covers that offset, replayed first, so the base blob keeps its full length
  and is truncated by reference exactly as before;
* a compacted blob (``wsfront.maintenance.compact``: meta ``compacted``)
  is a one-segment upload from offset 0.  Its ``sources`` are the blobs of
  the version it replaced; uploads that wrote any of those are
  *superseded* (the compacted blob holds the same bytes) and are set aside
  before bases are chosen, so old blobs GC had not yet collected neither
  compete for the path nor serve as a base; they are recorded unreferenced,
  so GC collects them as it would have;
* uploads nothing is based on are *tips*.  One tip per inode is the file
  (the one with ``created_at`` in its meta if writers record it, else the
  largest); other tips (old versions GC had not yet collected) go to
  ``/lost+found/`` so nothing is lost silently, and the report names them.

Limits (reported, never guessed): renames after an upload began are lost
(the path is the one the upload began at); live uploads (unsealed blobs)
are not restored; users, passwords and quotas are not in blob metadata and
must be re-created (``wsfs user add``); the catalog must have no files.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Iterable
from itertools import pairwise
from typing import Any

import attrs
from twisted.logger import Logger

from wsfront.catalog import errors as catalog_errors
from wsfront.transfer.pool import StoragePool
from wsstorage.records import BlobInfo

log = Logger()

REBUILD_OWNER = "fsck-rebuild"
LOST_FOUND = "/lost+found"
NEEDED = ("inode", "path", "owner", "upload", "file_offset")


@attrs.frozen
class Piece:
    """One sealed blob: a segment of an upload, and the servers holding it."""

    blob_id: str
    size: int
    epoch: int
    start: int
    upload: str
    inode: int
    path: str
    owner: str
    created_at: float | None
    nodes: tuple[str, ...]
    #: For a compacted blob: the blobs of the version it replaced.
    sources: tuple[str, ...] = ()


@attrs.define
class Upload:
    """One upload's chain of segments and what it was based on."""

    upload_id: str
    chain: list[Piece]
    base: Upload | None = None

    @property
    def start(self) -> int:
        return self.chain[0].start

    @property
    def end(self) -> int:
        return self.chain[-1].start + self.chain[-1].size

    @property
    def path(self) -> str:
        return self.chain[-1].path

    @property
    def owner(self) -> str:
        return self.chain[-1].owner

    @property
    def created_at(self) -> float | None:
        stamps = [p.created_at for p in self.chain if p.created_at is not None]
        return max(stamps) if stamps else None


def pieces_from_listings(
    listings: dict[str, Iterable[BlobInfo]],
) -> tuple[list[Piece], dict[str, int]]:
    """Sealed blobs with complete meta, merged over servers.  A copy whose
    size differs from the most common one is left out (repair re-copies)."""
    copies: dict[str, list[tuple[str, BlobInfo]]] = defaultdict(list)
    skipped = Counter()
    for node, infos in listings.items():
        for info in infos:
            if not info.sealed:
                skipped["unsealed"] += 1
                continue
            copies[info.blob_id].append((node, info))
    pieces = []
    for blob_id, held in sorted(copies.items()):
        meta = held[0][1].meta
        if not all(k in meta for k in NEEDED):
            skipped["no_meta"] += 1
            continue
        sizes = Counter(info.size for _, info in held)
        size = max(sizes, key=lambda s: (sizes[s], s))
        nodes = tuple(sorted(node for node, info in held if info.size == size))
        created = meta.get("created_at")
        pieces.append(
            Piece(
                blob_id=blob_id,
                size=size,
                epoch=max(info.epoch for _, info in held),
                start=int(meta["file_offset"]),
                upload=str(meta["upload"]),
                inode=int(meta["inode"]),
                path=str(meta["path"]),
                owner=str(meta["owner"]),
                created_at=float(created) if created is not None else None,
                nodes=nodes,
                sources=tuple(meta.get("sources") or ()) if meta.get("compacted") else (),
            )
        )
    return pieces, dict(skipped)


def _chain(pieces: list[Piece]) -> list[Piece]:
    """An upload's sealed segments in the order they were written: each
    takeover raised the epoch."""
    return sorted(pieces, key=lambda p: (p.epoch, p.start, p.blob_id))


def _complete(chain: list[Piece]) -> bool:
    """Each segment starts at or below where the one before it ended (a
    resume never skips bytes); a gap means a segment is missing."""
    return all(b.start <= a.start + a.size for a, b in pairwise(chain))


def superseded(pieces: list[Piece]) -> set[tuple[int, str]]:
    """(inode, upload) of every upload that wrote a blob a compacted blob of
    the same inode replaced: the compacted blob holds those bytes now."""
    sources: dict[int, set[str]] = defaultdict(set)
    for p in pieces:
        sources[p.inode].update(p.sources)
    return {(p.inode, p.upload) for p in pieces if p.blob_id in sources[p.inode]}


def plan_files(pieces: list[Piece]) -> tuple[list[tuple[str, Upload]], list[dict[str, Any]]]:
    """(path, tip upload) to create, in order, and the problems found."""
    problems: list[dict[str, Any]] = []
    replaced = superseded(pieces)
    by_inode: dict[int, dict[str, list[Piece]]] = defaultdict(lambda: defaultdict(list))
    for p in pieces:
        if (p.inode, p.upload) in replaced:
            continue
        by_inode[p.inode][p.upload].append(p)
    files: list[tuple[str, Upload]] = []
    taken: set[str] = set()
    for inode in sorted(by_inode):
        uploads = {}
        for upload_id, group in sorted(by_inode[inode].items()):
            chain = _chain(group)
            if not _complete(chain):
                problems.append({"upload": upload_id, "inode": inode, "why": "hole in segments"})
                continue
            uploads[upload_id] = Upload(upload_id, chain)
        used_as_base: set[str] = set()
        for up in uploads.values():
            if up.start == 0:
                continue
            bases = sorted(
                (b for b in uploads.values() if b is not up and b.end >= up.start),
                key=lambda b: (b.created_at or 0.0, b.end, b.upload_id),
            )
            if not bases:
                problems.append({"upload": up.upload_id, "inode": inode, "why": "no base"})
                continue
            up.base = bases[-1]
            used_as_base.add(bases[-1].upload_id)
        tips = [
            u for u in uploads.values()
            if u.upload_id not in used_as_base and (u.start == 0 or u.base is not None)
        ]  # fmt: skip
        tips.sort(key=lambda u: (u.created_at or 0.0, u.end, u.upload_id), reverse=True)
        for i, tip in enumerate(tips):
            path = tip.path
            if i > 0 or path in taken:
                name = path.rstrip("/").rsplit("/", 1)[-1] or "file"
                path = f"{LOST_FOUND}/{inode}-{tip.upload_id}-{name}"
                problems.append({"inode": inode, "upload": tip.upload_id, "why": "ambiguous",
                                 "moved_to": path})  # fmt: skip
            taken.add(path)
            files.append((path, tip))
    return files, problems


async def _makedirs(catalog, path: str) -> None:
    parts = [p for p in path.split("/") if p][:-1]
    for i in range(1, len(parts) + 1):
        try:
            await catalog.mkdir("/" + "/".join(parts[:i]))
        except catalog_errors.Exists:
            pass


async def _replay(catalog, path: str, up: Upload, replicas: int, now: float) -> None:
    """Replay ``up`` (after its base) as uploads committed at ``path``."""
    if up.base is not None:
        await _replay(catalog, path, up.base, replicas, now)
    first = up.chain[0]
    session = await catalog.begin_upload(
        up.owner,
        path,
        base_length=up.start,
        blob_id=first.blob_id,
        replicas=list(first.nodes),
        wanted_replicas=replicas,
        owner=REBUILD_OWNER,
        expires_at=now + 86400.0,
        meta={"rebuilt": True},
    )
    uid, epoch = session.upload_id, session.epoch
    current = first
    for piece in up.chain[1:]:
        end = current.start + current.size
        await catalog.checkpoint(uid, epoch, end)
        if piece.start < end:
            # The takeover rolled back below a segment that was dropped
            # unsealed (so it is not on any server): stand in for it, so the
            # segment before keeps its full length and is cut by reference.
            await catalog.restart_at(uid, epoch, end, f"{piece.blob_id}-gap", [], replicas)
        await catalog.restart_at(uid, epoch, piece.start, piece.blob_id, list(piece.nodes),
                                 replicas)  # fmt: skip
        current = piece
    await catalog.checkpoint(uid, epoch, up.end)
    await catalog.commit_upload(uid, epoch, up.end)


async def rebuild_catalog(
    catalog,
    pool: StoragePool,
    replicas: int,
    now: float,
) -> dict[str, Any]:
    """Rebuild the namespace of the empty ``catalog`` from every server in
    ``pool`` (which must all be reachable: a missing server's blobs would be
    missing files).  Registers the servers; fires with a report."""
    status = await catalog.status()
    if status["files"] or status["live_uploads"]:
        raise ValueError("the catalog is not empty: --rebuild-catalog needs a new catalog")
    await pool.probe_all()
    down = [n for n in pool.names() if not pool.is_up(n)]
    if down:
        raise ValueError(f"storage servers unreachable: {', '.join(down)}; all are needed")
    listings = {}
    for node in pool.names():
        listings[node] = await pool.client(node).list_blobs()
    endpoints = {node: pool.endpoint(node) for node in pool.names()}
    return await rebuild_from_listings(catalog, listings, endpoints, replicas, now)


async def rebuild_from_listings(
    catalog,
    listings: dict[str, Iterable[BlobInfo]],
    endpoints: dict[str, str],
    replicas: int,
    now: float,
) -> dict[str, Any]:
    """Rebuild from each server's ``list_blobs`` (``rebuild_catalog`` without
    the network part); registers the servers of ``endpoints``."""
    for node, endpoint in sorted(endpoints.items()):
        await catalog.register_node(node, endpoint)
    pieces, skipped = pieces_from_listings(listings)
    files, problems = plan_files(pieces)
    restored = 0
    for path, tip in files:
        try:
            await _makedirs(catalog, path)
            await _replay(catalog, path, tip, replicas, now)
            restored += 1
        except catalog_errors.CatalogError as e:
            problems.append({"upload": tip.upload_id, "path": path, "why": str(e)})
    # Blobs a compaction replaced are recorded unreferenced, so GC deletes
    # them after its grace like any collectable blob (not as orphans).
    replaced = superseded(pieces)
    old = [p for p in pieces if (p.inode, p.upload) in replaced]
    for p in old:
        await catalog.add_blob(p.blob_id, list(p.nodes), replicas)
    log.info("rebuild: {n} files restored from {b} blobs", n=restored, b=len(pieces))
    return {
        "files": restored,
        "blobs": len(pieces),
        "replaced_by_compaction": len(old),
        "skipped": skipped,
        "problems": problems,
        "under_replicated": await catalog.count_under_replicated(),
    }
