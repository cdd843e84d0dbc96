"""What a server's error answer to fsck's ``stat`` of a suspect copy
says of that copy (``fsck_confirm.lost``): not found, or a record it
cannot decode, is a copy lost; any other error (EIO reading the record)
says nothing of it, which is left unjudged, not marked.  Against real
in-process storage servers, on SQLite and PostgreSQL."""

from __future__ import annotations

import errno
import os

import pytest_twisted

from tests.maintenance_env import populate
from tests.test_fsck_confirm import FILES, collector, failing_listing, held_by
from tests.test_fsck_confirm import env as env  # the fixture
from tests.test_fsck_races import replica_states
from wsfront.catalog.records import REPLICA_OK
from wsfront.maintenance.fsck import audit, check
from wsstorage.diskformat import FormatError
from wsstorage.errors import BlobNotFound, StorageError, error_from_code


def test_a_peer_error_code_without_a_class_is_kept():
    """A ``format`` error (a record the server cannot decode) reaches the
    client as such, not as a bare ``error``; known codes keep their class."""
    err = error_from_code(FormatError.code, "blob record damaged")
    assert type(err) is StorageError and err.code == FormatError.code
    assert err.message == "blob record damaged"
    assert type(error_from_code("not_found", "no blob")) is BlobNotFound
    assert error_from_code("error", "internal error").code == "error"


@pytest_twisted.ensureDeferred
async def test_copies_whose_stat_fails_with_eio_are_not_judged_lost(env, monkeypatch):
    """A server whose listing failed (its disk back by the confirmations)
    answers each stat with an error of its disk that is not a disk error
    it maps (EIO reading the record, sent as a bare ``error``): none of
    its copies is reported missing or marked, the check is not cut
    short, and the server is not taken for unreachable."""
    await populate(env, count=FILES, size=8 * 1024)
    victim = "s1"
    held = await held_by(env, victim)
    store = env.nodes[victim].store

    def eio(paths, data=False):
        raise OSError(errno.EIO, "Input/output error")

    await failing_listing(env, monkeypatch, victim, lambda blobs, away: os.rename(away, blobs))
    monkeypatch.setattr(store, "_read_record", eio)
    pool = env.transfers.pool
    report = await check(env.catalog, pool, collector(env))
    assert [f["node"] for f in report["failing_nodes"]] == [victim], report
    assert [m for m in report["missing"] if m["node"] == victim] == [], report
    assert report["unreachable_nodes"] == [], report
    # Each copy a stat failed is unknown, and a problem (its server erred).
    assert 0 < report["unknown"] <= len(held), report
    assert report["problems"] >= 1 + report["unknown"], report
    assert await audit(env.catalog, pool, collector(env)) == 0
    for blob in held:
        assert (await replica_states(env, blob))[victim] == REPLICA_OK
