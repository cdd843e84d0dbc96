"""The rebuild replays upload histories into exactly the catalog they made.

Each scenario drives the real SQLite catalog the way the transfer layer does
(begin, checkpoints, takeovers that fence the current blob, restarts,
commits) while keeping the storage servers' view of every blob (size,
sealed, epoch, meta) as ``list_blobs`` would report it.  The catalog is then
rebuilt from those listings alone, and every file's extents, size and blob
lengths must come out as they were.
"""

from __future__ import annotations

import itertools

import pytest
import pytest_twisted

from wsfront.catalog import open_catalog
from wsfront.maintenance.rebuild import rebuild_from_listings
from wsstorage.records import OPEN, SEALED, BlobInfo

NODES = ("s1", "s2")


class History:
    """Plays one front end's uploads against a catalog, tracking the blobs."""

    ids = itertools.count()

    def __init__(self, catalog) -> None:
        self.catalog = catalog
        self.blobs: dict[str, dict] = {}
        self.upload = None

    def _new_blob(self, upload, start: int) -> str:
        blob_id = f"b{next(self.ids):06d}"
        self.blobs[blob_id] = {
            "size": 0, "sealed": False, "epoch": upload.epoch if upload else 1,
            "start": start,
        }  # fmt: skip
        return blob_id

    def _meta(self, upload) -> None:
        self.blobs[upload.blob_id]["meta"] = {
            "inode": upload.inode, "path": upload.path, "owner": upload.user,
            "upload": upload.upload_id, "file_offset": upload.blob_start,
        }  # fmt: skip
        self.blobs[upload.blob_id]["epoch"] = upload.epoch

    async def start(self, path: str, at: int = 0) -> None:
        blob_id = self._new_blob(None, at)
        self.upload = await self.catalog.begin_upload(
            "alice", path, base_length=at, blob_id=blob_id, replicas=list(NODES),
            wanted_replicas=2, owner="fe", expires_at=1e12,
        )  # fmt: skip
        self._meta(self.upload)

    async def write(self, n: int) -> None:
        up = self.upload
        blob = self.blobs[up.blob_id]
        blob["size"] += n
        self.upload = await self.catalog.checkpoint(
            up.upload_id, up.epoch, up.blob_start + blob["size"]
        )

    async def takeover(self, n: int) -> None:
        up = await self.catalog.take_over(self.upload.upload_id, self.upload.epoch, "fe2")
        keep = max(0, n - up.blob_start)
        blob = self.blobs[up.blob_id]
        blob["size"], blob["epoch"] = keep, up.epoch  # the fence
        blob["sealed"] = keep > 0
        new = self._new_blob(up, n)
        self.upload = await self.catalog.restart_at(up.upload_id, up.epoch, n, new, list(NODES), 2)
        self._meta(self.upload)

    async def commit(self) -> None:
        up = self.upload
        blob = self.blobs[up.blob_id]
        blob["sealed"] = True
        await self.catalog.commit_upload(up.upload_id, up.epoch, up.blob_start + blob["size"])

    def listings(self) -> dict[str, list[BlobInfo]]:
        infos = [
            BlobInfo(blob_id=b, size=v["size"], durable=v["size"],
                     state=SEALED if v["sealed"] else OPEN, epoch=v["epoch"], meta=v["meta"])
            for b, v in self.blobs.items()
        ]  # fmt: skip
        return {n: infos for n in NODES}


async def snapshot(catalog, paths) -> dict:
    out = {}
    for path in paths:
        entry = await catalog.stat(path)
        extents = []
        for e in entry.version.extents:
            blob = await catalog.get_blob(e.blob_id)
            extents.append((e.blob_id, e.blob_offset, e.length, e.file_offset, blob.length,
                            blob.sealed, sorted(blob.ok_replicas)))  # fmt: skip
        out[path] = (entry.version.size, extents)
    return out


async def s_simple(h):
    await h.start("/a/f")
    await h.write(100)
    await h.commit()


async def s_takeover_forward(h):
    await h.start("/a/f")
    await h.write(100)
    await h.takeover(100)
    await h.write(50)
    await h.commit()


async def s_takeover_rolls_back_within_the_blob(h):
    await h.start("/a/f")
    await h.write(100)
    await h.takeover(60)
    await h.write(40)
    await h.commit()


async def s_rollback_below_the_current_blob(h):
    await h.start("/a/f")
    await h.write(100)
    await h.takeover(100)
    await h.write(50)
    await h.takeover(70)
    await h.write(30)
    await h.commit()


async def s_resume_committed_below_its_size(h):
    await s_simple(h)
    await h.start("/a/f", at=40)
    await h.write(30)
    await h.commit()


async def s_append_to_committed(h):
    await s_simple(h)
    await h.start("/a/f", at=100)
    await h.write(20)
    await h.commit()


async def s_appended_twice(h):
    # Each append covers the offset the one before it starts at: a base is
    # never taken from a later upload (that made a cycle and dropped both).
    await s_append_to_committed(h)
    await h.start("/a/f", at=120)
    await h.write(10)
    await h.commit()


async def s_appended_twice_then_resumed_below(h):
    await s_appended_twice(h)
    await h.start("/a/f", at=110)
    await h.write(30)
    await h.commit()


async def s_resume_then_roll_back_into_the_base(h):
    await s_simple(h)
    await h.start("/a/f", at=80)
    await h.write(20)
    await h.takeover(50)
    await h.write(10)
    await h.commit()


async def s_several_files_and_takeovers(h):
    await s_rollback_below_the_current_blob(h)
    await h.start("/a/g")
    await h.write(10)
    await h.takeover(10)
    await h.write(10)
    await h.takeover(20)
    await h.write(5)
    await h.commit()
    await h.start("/a/g", at=25)
    await h.write(7)
    await h.commit()


SCENARIOS = [
    s_simple,
    s_takeover_forward,
    s_takeover_rolls_back_within_the_blob,
    s_rollback_below_the_current_blob,
    s_resume_committed_below_its_size,
    s_append_to_committed,
    s_appended_twice,
    s_appended_twice_then_resumed_below,
    s_resume_then_roll_back_into_the_base,
    s_several_files_and_takeovers,
]


@pytest.mark.parametrize("scenario", SCENARIOS, ids=lambda s: s.__name__[2:])
@pytest_twisted.ensureDeferred
async def test_rebuild_reproduces_extents_sizes_and_blob_lengths(scenario, tmp_path):
    from twisted.internet import reactor

    original = open_catalog(reactor, f"sqlite:///{tmp_path / 'a.sqlite'}")
    rebuilt = open_catalog(reactor, f"sqlite:///{tmp_path / 'b.sqlite'}")
    try:
        await original.mkdir("/a")
        h = History(original)
        await scenario(h)
        paths = sorted({b["meta"]["path"] for b in h.blobs.values()})
        want = await snapshot(original, paths)
        endpoints = {n: f"tcp:127.0.0.1:{7000 + i}" for i, n in enumerate(NODES)}
        report = await rebuild_from_listings(rebuilt, h.listings(), endpoints, 2, 0.0)
        assert report["problems"] == []
        assert report["files"] == len(paths)
        assert await snapshot(rebuilt, paths) == want
    finally:
        await original.close()
        await rebuilt.close()
