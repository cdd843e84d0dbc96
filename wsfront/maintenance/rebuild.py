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
* a compaction copy (``wsfront.maintenance.compact``: meta ``compacted``)
  is recognised by content, never by its ``created_at`` (the clock of the
  front end that compacted, which may be fast, and which is stamped even on
  a copy whose compaction lost its race and whose delete failed): it is a
  copy of the version whose replayed extent list has the ETag it kept (a
  digest of that list), its size and its ``sources``.  Where that version
  is in the history that keeps the path (the file itself or the base of a
  later resume), the copy stands in for it, as it did once the compaction
  swapped it in (if it is on ``replicas`` servers; else the old blobs stay);
  where it is not (the file was overwritten, or that version went to
  ``/lost+found/``), the copy is not used, is reported and left for GC.  A
  copy no surviving history reproduces (GC took the old blobs) is a version
  of its own: uploads that wrote its ``sources`` are older, set aside and
  recorded unreferenced, so GC collects them; it serves as a base where no
  ordinary upload covers the offset, and as a version it ranks below every
  ordinary upload of the inode (a surviving upload is newer than the blobs
  GC took, or the copy was abandoned to it), so at worst it goes to
  ``/lost+found/``;
* uploads nothing is based on are *tips*.  One tip per inode is the file
  (ordinary uploads before compaction copies; among them the one with the
  newest ``created_at`` in its meta if writers record it, else the
  largest); other tips (old versions GC had not yet collected) go to
  ``/lost+found/`` so nothing is lost silently, and the report names them.

Limits (reported, never guessed): renames after an upload began are lost
(the path is the one the upload began at); live uploads (unsealed blobs)
are not restored; users, passwords and quotas are not in blob metadata and
must be re-created (``wsfs user add --adopt-files``: their roots already
hold the rebuilt files); the catalog must have no files.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Iterable
from itertools import pairwise
from typing import Any

import attrs
from twisted.logger import Logger

from wsfront.catalog import errors as catalog_errors
from wsfront.catalog._rows import etag_of
from wsfront.maintenance.adopt import adopt_cluster
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
    #: A compaction copy (meta ``compacted``), and the ETag of the version
    #: it copied (the ETag is a digest of that version's extent list).
    compacted: bool = False
    etag: str | None = None


@attrs.define(eq=False)
class Upload:
    """One upload's chain of segments and what it was based on.  A
    compaction copy is a one-segment upload from offset 0."""

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
    def compacted(self) -> bool:
        return self.chain[0].compacted

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
        compacted = bool(meta.get("compacted"))
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
                sources=tuple(meta.get("sources") or ()) if compacted else (),
                compacted=compacted,
                etag=str(meta["etag"]) if compacted and meta.get("etag") else None,
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


#: A version's extent list as the catalog holds it: (blob, file offset,
#: length), every extent starting at offset 0 of its blob.
Layout = tuple[tuple[str, int, int], ...]

#: Layouts worked out per upload (one per combination of compactions that
#: may or may not have been swapped in below it); more are not looked at.
MAX_LAYOUTS = 64


def _cut(layout: Layout, length: int) -> Layout:
    """The catalog's truncation by reference (``truncate_extents``)."""
    kept = []
    for blob_id, offset, size in layout:
        if offset >= length:
            break
        kept.append((blob_id, offset, min(size, length - offset)))
    return tuple(kept)


def _lay(base: Layout, up: Upload) -> Layout:
    """``up``'s version laid over ``base`` as the replay (and the upload
    the first time) builds it: each segment cuts what lies at or above its
    start, and an empty segment adds no extent."""
    layout = base
    for piece in up.chain:
        layout = _cut(layout, piece.start)
        if piece.size > 0:
            layout += ((piece.blob_id, piece.start, piece.size),)
    return layout


def _etag(layout: Layout) -> str:
    return etag_of({"blob_id": b, "blob_offset": 0, "length": n} for b, _, n in layout)


def _copies(copy: Piece, layout: Layout) -> bool:
    """Whether the compaction copy ``copy`` is a copy of the version laid
    out as ``layout``: same size, the ETag compaction kept is that layout's,
    and its ``sources`` (when recorded) are that layout's blobs."""
    if not layout or sum(n for _, _, n in layout) != copy.size:
        return False
    if copy.etag is None and not copy.sources:
        return False
    if copy.etag is not None and copy.etag != _etag(layout):
        return False
    return not copy.sources or set(copy.sources) == {b for b, _, _ in layout}


@attrs.define
class _Inode:
    """The planning of one inode: its uploads, their bases, and which
    compaction copy stands for which upload's version."""

    inode: int
    uploads: dict[str, Upload]
    copies: dict[str, Upload]
    #: upload id -> the compaction copies of its version, best first
    matches: dict[str, list[Upload]] = attrs.Factory(dict)
    #: uploads set aside: they wrote a blob a compaction copy with no
    #: surviving history replaced, so they are older than that copy
    aside: set[str] = attrs.Factory(set)

    def choose_bases(self) -> None:
        """Each upload that resumed a committed file (first segment above
        0) gets an upload that covers that offset as its base: an ordinary
        upload, else a compaction copy (one whose history is gone: a resume
        after a compaction whose old blobs GC took).  Among those, one
        stamped before the resume began, then the newest; never one that
        is itself based on the resume (a base was committed before)."""
        ordinary = [u for u in self.uploads.values() if u.upload_id not in self.aside]
        copies = [c for c in self.copies.values() if c.upload_id not in self.aside]
        for up in self.uploads.values():
            up.base = None
        # The latest resumes choose first, so an earlier one never takes a
        # later one (which builds on it) for its base.
        for up in sorted(ordinary, key=lambda u: (_began(u), u.start, u.upload_id), reverse=True):
            if up.start == 0:
                continue
            mine = {p.blob_id for p in up.chain}  # a copy of them came later
            for group in (ordinary, copies):
                bases = [
                    b for b in group
                    if b is not up and b.end >= up.start and not mine & set(b.chain[0].sources)
                ]  # fmt: skip
                bases.sort(key=lambda b: _base_rank(b, up), reverse=True)
                up.base = next((b for b in bases if not _based_on(b, up)), None)
                if up.base is not None:
                    break

    def match_copies(self) -> None:
        """Work out the layouts each upload's version may have had (with
        each compaction below it swapped in or not) and which compaction
        copies copied exactly one of them."""
        layouts: dict[str, list[Layout]] = {}
        self.matches = {}

        def layouts_of(up: Upload) -> None:
            line = _line(up)  # up and its bases, down to the first one
            for u in reversed(line):
                if u.upload_id in layouts:
                    continue
                if u.compacted:
                    layouts[u.upload_id] = [_lay((), u)]
                    continue
                below = layouts.get(u.base.upload_id, []) if u.base is not None else [()]
                found = list(dict.fromkeys(_lay(b, u) for b in below))[:MAX_LAYOUTS]
                mine = [
                    c for c in self.copies.values()
                    if c.upload_id not in self.aside and any(_copies(c.chain[0], x) for x in found)
                ]  # fmt: skip
                if mine:
                    mine.sort(key=lambda c: (-len(c.chain[0].nodes), c.upload_id))
                    self.matches[u.upload_id] = mine
                    found += [_lay((), c) for c in mine if _lay((), c) not in found]
                    found = found[:MAX_LAYOUTS]
                layouts[u.upload_id] = found

        for up in self.uploads.values():
            if up.upload_id not in self.aside and (up.start == 0 or up.base is not None):
                layouts_of(up)

    def matched(self) -> set[str]:
        return {c.upload_id for copies in self.matches.values() for c in copies}

    def set_aside(self) -> bool:
        """Set aside what a compaction copy that no surviving history
        reproduces has replaced: uploads and older copies that wrote its
        ``sources``, and so on down; a copy of a version whose blobs are
        all among them; all but one copy of one version.  Fires True when
        that grew."""
        matched = self.matched()
        everything = [*self.uploads.values(), *self.copies.values()]
        by_blob = {p.blob_id: u for u in everything for p in u.chain}
        unmatched = [c for c in self.copies.values() if c.upload_id not in matched | self.aside]
        aside: set[str] = set()
        for copy in unmatched:
            replaced = self._replaced_by(copy, by_blob)
            aside |= {
                u.upload_id for u in everything if any(p.blob_id in replaced for p in u.chain)
            }
            aside |= {
                c.upload_id for c in self.copies.values()
                if c is not copy and c.chain[0].sources and set(c.chain[0].sources) < replaced
            }  # fmt: skip
        seen: set[tuple[str | None, int]] = set()
        for copy in sorted(unmatched, key=lambda c: (-len(c.chain[0].nodes), c.upload_id)):
            key = (copy.chain[0].etag, copy.end)
            if copy.chain[0].etag is not None and key in seen:
                aside.add(copy.upload_id)
            seen.add(key)
        grew = not aside <= self.aside
        self.aside |= aside
        return grew

    @staticmethod
    def _replaced_by(copy: Upload, by_blob: dict[str, Upload]) -> set[str]:
        """The blobs ``copy`` replaced: its ``sources``, theirs, and so on."""
        blobs: set[str] = set()
        todo = [copy]
        while todo:
            for blob_id in todo.pop().chain[0].sources:
                if blob_id not in blobs:
                    blobs.add(blob_id)
                    owner = by_blob.get(blob_id)
                    if owner is not None and owner.compacted:
                        todo.append(owner)
        return blobs


def plan_files(
    pieces: list[Piece], replicas: int = 1
) -> tuple[list[tuple[str, Upload]], list[dict[str, Any]]]:
    """(path, tip upload) to create, in order, and the problems found.

    A compaction copy stands for the version it copied only where that
    version is, in the history that keeps the path, the file's content (or
    the base of it): it is recognised by content (its size, the ETag it
    kept, which is a digest of the extent list it copied, and its
    ``sources``), never by its ``created_at``, which is the clock of the
    front end that compacted.  A copy whose version is not there (the
    compaction lost its race and its copy survived the delete, or the file
    changed after it) is left for GC.  A copy whose history is gone (GC took
    the old blobs) is a version of its own, but ranks below every ordinary
    upload: an upload that survives beside it is newer than the blobs GC
    took, or the copy was abandoned to it."""
    problems: list[dict[str, Any]] = []
    by_inode: dict[int, dict[str, list[Piece]]] = defaultdict(lambda: defaultdict(list))
    for p in pieces:
        by_inode[p.inode][p.upload].append(p)
    files: list[tuple[str, Upload]] = []
    taken: set[str] = set()
    for inode in sorted(by_inode):
        uploads, copies = {}, {}
        for upload_id, group in sorted(by_inode[inode].items()):
            chain = _chain(group)
            if chain[0].compacted:
                copies[upload_id] = Upload(upload_id, chain[:1])  # compact-<blob>: one blob
                continue
            if not _complete(chain):
                problems.append({"upload": upload_id, "inode": inode, "why": "hole in segments"})
                continue
            uploads[upload_id] = Upload(upload_id, chain)
        plan = _Inode(inode, uploads, copies)
        for _ in range(8):
            plan.choose_bases()
            plan.match_copies()
            if not plan.set_aside():
                break
        live = {k: u for k, u in uploads.items() if k not in plan.aside}
        matched = plan.matched()
        used_as_base = {u.base.upload_id for u in live.values() if u.base is not None}
        for up in live.values():
            if up.start != 0 and up.base is None:
                problems.append({"upload": up.upload_id, "inode": inode, "why": "no base"})
        tips = sorted(
            (u for u in live.values()
             if u.upload_id not in used_as_base and (u.start == 0 or u.base is not None)),
            key=_rank, reverse=True,
        )  # fmt: skip
        tips += sorted(
            (c for c in copies.values()
             if c.upload_id not in plan.aside | matched | used_as_base),
            key=_rank, reverse=True,
        )  # fmt: skip
        for i, tip in enumerate(tips):  # ordinary uploads first, then copies
            path = tip.path
            if i > 0 or path in taken:
                name = path.rstrip("/").rsplit("/", 1)[-1] or "file"
                path = f"{LOST_FOUND}/{inode}-{tip.upload_id}-{name}"
                problems.append({"inode": inode, "upload": tip.upload_id, "why": "ambiguous",
                                 "moved_to": path})  # fmt: skip
            else:
                tip = _swap_in_copies(tip, plan.matches, replicas)
            taken.add(path)
            files.append((path, tip))
    return files, problems


def _began(up: Upload) -> float:
    """The stamp of an upload's first segment (0 without stamps)."""
    return up.chain[0].created_at or 0.0


def _based_on(up: Upload, other: Upload) -> bool:
    """Whether ``other`` is in ``up``'s line of bases (or is ``up``)."""
    return any(u is other for u in _line(up))


def _base_rank(base: Upload, up: Upload) -> tuple[bool, float, bool, int, str]:
    """How likely ``base`` is what ``up`` resumed: stamped before ``up``
    began, then the newest; between equal stamps (none recorded) one that
    ends where ``up`` starts (an append), then the largest."""
    stamp = base.created_at or 0.0
    return (stamp <= _began(up), stamp, base.end == up.start, base.end, base.upload_id)


def _rank(up: Upload) -> tuple[float, int, str]:
    """Between versions of one kind: the newest stamp, else the largest."""
    return (up.created_at or 0.0, up.end, up.upload_id)


def _line(up: Upload) -> list[Upload]:
    """``up``, its base, that one's base, and so on (a loop is cut)."""
    line: list[Upload] = []
    seen: set[int] = set()
    while up is not None and id(up) not in seen:
        seen.add(id(up))
        line.append(up)
        up = up.base
    return line


def _swap_in_copies(up: Upload, matches: dict[str, list[Upload]], replicas: int) -> Upload:
    """``up`` with the newest version in its history that a compaction
    copy at full strength holds replaced by that copy (the same bytes in one
    blob, what the catalog held once the compaction swapped it in)."""
    line = _line(up)
    for i, u in enumerate(line):
        strong = [c for c in matches.get(u.upload_id, ()) if len(c.chain[0].nodes) >= replicas]
        if strong:
            if i == 0:
                return strong[0]
            line[i - 1].base = strong[0]
            break
    return up


def _blobs_of(up: Upload) -> set[str]:
    return {p.blob_id for u in _line(up) for p in u.chain}


def _left_over(
    pieces: list[Piece], files: list[tuple[str, Upload]], problems: list[dict[str, Any]]
) -> tuple[list[Piece], list[Piece]]:
    """The blobs no rebuilt file uses, besides those of uploads reported
    broken (a hole, no base: orphans for GC's sweep, as before): (replaced
    by a compaction, compaction copies nothing replaced).  A copy is
    replaced when a copy in use lists it among its ``sources``, down the
    line."""
    used: set[str] = set()
    for _, tip in files:
        used |= _blobs_of(tip)
    broken = {p["upload"] for p in problems if p.get("why") in ("hole in segments", "no base")}
    by_blob = {p.blob_id: p for p in pieces}
    superseded: set[str] = set()
    todo = [by_blob[b] for b in used if b in by_blob and by_blob[b].compacted]
    while todo:
        for blob_id in todo.pop().sources:
            if blob_id not in superseded:
                superseded.add(blob_id)
                if blob_id in by_blob and by_blob[blob_id].compacted:
                    todo.append(by_blob[blob_id])
    left = [p for p in pieces if p.blob_id not in used and p.upload not in broken]
    replaced = [p for p in left if not p.compacted or p.blob_id in superseded]
    unused = [p for p in left if p.compacted and p.blob_id not in superseded]
    return replaced, unused


async def _makedirs(catalog, path: str) -> None:
    parts = [p for p in path.split("/") if p][:-1]
    for i in range(1, len(parts) + 1):
        try:
            await catalog.mkdir("/" + "/".join(parts[:i]))
        except catalog_errors.Exists:
            pass


async def _replay(catalog, path: str, up: Upload, replicas: int, now: float) -> None:
    """Replay ``up`` (after its base) as uploads committed at ``path``."""
    for u in reversed(_line(up)):
        await _replay_one(catalog, path, u, replicas, now)


async def _replay_one(catalog, path: str, up: Upload, replicas: int, now: float) -> None:
    """Replay one upload, its base being the committed version at ``path``."""
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


def _why_down(pool: StoragePool, down: list[str]) -> str:
    """Why ``rebuild_catalog`` cannot start: the servers that refused the
    secret (an authentication failure: a wrong ``--secret-file``, which
    "unreachable" would send an operator to the network for), then the
    servers that did not answer."""
    refused = [n for n in down if pool.secret_refused(n)]
    unreachable = [n for n in down if n not in refused]
    parts = []
    if refused:
        parts.append(
            f"storage servers {', '.join(refused)} refused the secret of --secret-file "
            "(authentication failed: is it the cluster's?)"
        )
    if unreachable:
        what = "unreachable" if refused else "storage servers unreachable"
        parts.append(f"{what}: {', '.join(unreachable)}")
    return "; ".join(parts) + "; all are needed"


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
        raise ValueError(_why_down(pool, down))
    # Before anything is recorded: servers of two clusters are refused.
    await adopt_cluster(catalog, pool)
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
    files, problems = plan_files(pieces, replicas)
    restored = 0
    for path, tip in files:
        try:
            await _makedirs(catalog, path)
            await _replay(catalog, path, tip, replicas, now)
            restored += 1
        except catalog_errors.CatalogError as e:
            problems.append({"upload": tip.upload_id, "path": path, "why": str(e)})
    # Blobs a compaction replaced, and compaction copies no file uses, are
    # recorded unreferenced, so GC deletes them after its grace like any
    # collectable blob (not as orphans).
    replaced, unused = _left_over(pieces, files, problems)
    for p in replaced + unused:
        await catalog.add_blob(p.blob_id, list(p.nodes), replicas)
    for p in unused:
        log.warn("rebuild: compaction copy {blob} of {path} is not used; left for GC",
                 blob=p.blob_id, path=p.path)  # fmt: skip
        problems.append({"inode": p.inode, "blob": p.blob_id, "why": "unused compaction copy"})
    log.info("rebuild: {n} files restored from {b} blobs", n=restored, b=len(pieces))
    return {
        "files": restored,
        "blobs": len(pieces),
        "replaced_by_compaction": len(replaced),
        "unused_compaction_copies": len(unused),
        "skipped": skipped,
        "problems": problems,
        "under_replicated": await catalog.count_under_replicated(),
    }
