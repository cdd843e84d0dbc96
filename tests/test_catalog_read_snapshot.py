"""A catalog read made of several statements sees one state of the
database, whatever commits between its statements, on both backends.

A RETR's ``stat`` reads the inode, then its version, then the version's
extents; a resuming client's ``find_upload`` the upload's row, then its
base extents.  Another front end replacing the file (or committing the
upload) between two of them deletes the rows the next statement reads: at
PostgreSQL's READ COMMITTED each statement saw the newest commit, so the
reader got a missing row (a TypeError: HTTP 500) or the old size with no
extents (an empty file served as a success).  Here the commit runs, on a
second catalog's connection, exactly between two statements of the read
(``PausingTx``), and the reader must see the whole old state or the whole
new one.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

import pytest
from twisted.internet import reactor

from tests.catalog_race import TIMEOUT, Outcome, in_tx, wait_until, waiting_for_a_lock
from wsfront.catalog import _accounts, _namespace, _uploads, open_catalog
from wsfront.catalog._db import Tx

pytest_plugins = ["tests.catalog_fixtures"]
NOW = 1_000_000.0
PATH = "/alice/f"


class PausingTx(Tx):
    """A transaction that runs ``meanwhile`` once, just before its first
    statement containing ``marker``: a failpoint between two statements."""

    def __init__(self, tx: Tx, marker: str, meanwhile: Callable[[], Any]) -> None:
        super().__init__(tx.backend, tx._cursor)
        self._marker = marker
        self._meanwhile: Callable[[], Any] | None = meanwhile
        self.paused = False

    def _before(self, sql: str) -> None:
        if self._meanwhile is not None and self._marker in sql:
            meanwhile, self._meanwhile = self._meanwhile, None
            meanwhile()
            self.paused = True

    def execute(self, sql: str, *params: Any) -> int:
        self._before(sql)
        return super().execute(sql, *params)

    def all(self, sql: str, *params: Any) -> list[Any]:
        self._before(sql)
        return super().all(sql, *params)

    def one(self, sql: str, *params: Any) -> Any | None:
        self._before(sql)
        return super().one(sql, *params)


@pytest.fixture
def two(catalog_url, clock):
    a = open_catalog(reactor, catalog_url, clock=clock)
    b = open_catalog(reactor, catalog_url, clock=clock)
    yield a, b
    a.close()
    b.close()


def begin(cat, blob: str, base: int = 0):
    return in_tx(
        cat, _uploads.begin_upload, NOW, "alice", PATH, base, blob, ["s1"], 1, "fe0",
        NOW + 60, None, None,
    )()  # fmt: skip


def commit_call(cat, up, length: int) -> Callable[[], Any]:
    return in_tx(cat, _uploads.commit_upload, NOW, up.upload_id, up.epoch, length, None, None)


def read_paused(cat, fn: Callable[[Tx], Any], marker: str, meanwhile: Callable[[], Any]) -> Any:
    """``fn`` as one read transaction of ``cat`` (as the catalog runs its
    reads), ``meanwhile`` run just before its first statement with
    ``marker``."""
    paused: list[PausingTx] = []

    def read(tx: Tx) -> Any:
        paused.append(PausingTx(tx, marker, meanwhile))
        return fn(paused[0])

    result = cat._runner.run_sync(read, write=False)
    assert paused[0].paused, f"no statement of the read has {marker!r}"
    return result


@pytest.mark.parametrize(
    "marker",
    [
        "FROM versions",  # after the inode's row: its version_id is the old one
        "FROM version_extents",  # after the version's row: its size is the old one
        "FROM uploads",  # after the version and its extents
    ],
)
def test_a_stat_racing_an_overwrite_sees_the_old_file_or_the_new_one_whole(two, marker):
    """Another front end replaces /alice/f (2000 bytes of blob old) with
    1000 bytes of blob new between two statements of a stat: the entry is
    the old file whole (2000 bytes of old in its extents) or the new one,
    never an error nor a size its extents do not cover."""
    a, b = two
    in_tx(a, _accounts.add_user, NOW, "alice", "x", False, None, None, None, None)()
    commit_call(a, begin(a, "old"), 2000)()
    replacing = begin(b, "new")
    committed = []

    entry = read_paused(
        a,
        lambda tx: _namespace.stat(tx, PATH),
        marker,
        lambda: committed.append(commit_call(b, replacing, 1000)()),
    )

    assert committed, "the overwrite did not commit"
    version = entry.version
    assert version is not None and not entry.pending
    assert (entry.size, version.size) in ((2000, 2000), (1000, 1000))
    blob = "old" if entry.size == 2000 else "new"
    assert [(e.blob_id, e.file_offset, e.length) for e in version.extents] == [
        (blob, 0, entry.size)
    ]
    assert all(e.replicas for e in version.extents)
    # The overwrite is what the next read sees.
    assert a._runner.run_sync(lambda tx: _namespace.stat(tx, PATH), write=False).size == 1000


@pytest.mark.parametrize("marker", ["FROM replicas", "FROM upload_extents"])
def test_a_resume_lookup_racing_the_upload_s_commit_sees_its_base_extents(two, marker):
    """An append to /alice/f (its first 2000 bytes kept, as upload
    extents) is committed by its front end between two statements of
    another's lookup of the pending upload: the lookup finds it live with
    its whole base, or (had it seen the commit) nothing, never a live
    upload whose base lost its extents."""
    a, b = two
    in_tx(a, _accounts.add_user, NOW, "alice", "x", False, None, None, None, None)()
    commit_call(a, begin(a, "old"), 2000)()
    appending = begin(b, "more", base=2000)
    committed = []

    found = read_paused(
        a,
        lambda tx: _uploads.find_upload(tx, PATH),
        marker,
        lambda: committed.append(commit_call(b, appending, 2500)()),
    )

    assert committed, "the append did not commit"
    if found is not None:
        assert found.upload_id == appending.upload_id
        assert [(e.blob_id, e.file_offset, e.length) for e in found.base_extents] == [
            ("old", 0, 2000)
        ]
    assert a._runner.run_sync(lambda tx: _namespace.stat(tx, PATH), write=False).size == 2500


@pytest.mark.parametrize("target", ["/alice/g", PATH], ids=["elsewhere", "onto itself"])
@pytest.mark.parametrize("marker", ["FROM versions", "FROM version_extents"])
def test_a_rename_racing_a_commit_of_the_moved_file_answers_it_whole(
    two, catalog_url, marker, target
):
    """A rename answers the entry it moved, read at the end of its write
    transaction (READ COMMITTED on PostgreSQL).  The file's overwrite is
    committed by another front end between two statements of that read:
    the rename waits for it or it waits for the rename (the moved file's
    row is locked), and the rename's entry is the old file or the new one
    whole, never a failed rename (TypeError) nor a size without extents."""
    a, b = two
    postgres = catalog_url.startswith("postgresql")
    in_tx(a, _accounts.add_user, NOW, "alice", "x", False, None, None, None, None)()
    commit_call(a, begin(a, "old"), 2000)()
    replacing = begin(b, "new")
    pids: list[int] = []
    committing = Outcome()

    def commit(tx: Tx) -> Any:
        if postgres:
            pids.append(tx.value("SELECT pg_backend_pid() AS pid"))
        return _uploads.commit_upload(
            tx, NOW, replacing.upload_id, replacing.epoch, 1000, None, None
        )

    def commit_beside() -> None:
        try:
            committing.result = b._runner.run_sync(commit)
        except BaseException as e:
            committing.error = e

    beside = threading.Thread(target=commit_beside)

    def meanwhile() -> None:
        beside.start()
        if postgres:
            waiting = waiting_for_a_lock(catalog_url, pids)
            wait_until(lambda: not beside.is_alive() or waiting(), "the commit to end or wait")
        # SQLite: the commit's BEGIN IMMEDIATE waits for the rename's lock.

    paused: list[PausingTx] = []

    def rename(tx: Tx) -> Any:
        paused.append(PausingTx(tx, marker, meanwhile))
        return _namespace.rename(paused[0], PATH, target, False, NOW, "alice")

    try:
        entry = a._runner.run_sync(rename, write=True)
    finally:
        if paused and paused[0].paused:
            beside.join(TIMEOUT)
    assert paused[0].paused and not beside.is_alive()
    assert committing.error is None, committing.error
    assert entry.path == target
    version = entry.version
    assert version is not None and version.size == entry.size in (2000, 1000)
    blob = "old" if entry.size == 2000 else "new"
    assert [(e.blob_id, e.file_offset, e.length) for e in version.extents] == [
        (blob, 0, entry.size)
    ]
    after = a._runner.run_sync(lambda tx: _namespace.stat(tx, target), write=False)
    assert after.size == 1000
