"""An existing single-catalog deployment upgraded to cluster binding binds
its stores with no operator action: a real ``twistd -n wslocal`` whose
stores hold blobs the catalog knows, restarted with every ``CLUSTER`` file
and the catalog's cluster id gone (as a store and a catalog of before the
binding are), finds every store its own, binds it and serves the data."""

from __future__ import annotations

import hashlib
import json
import os
import sqlite3

import pytest

from tests.test_wslocal import WsLocal, curl
from wsstorage.diskformat import CLUSTER_FILE

pytestmark = pytest.mark.slow


def test_wslocal_restarted_on_stores_of_before_binding_binds_them_all(tmp_path):
    data = tmp_path / "wsfs-data"
    log_path = tmp_path / "wslocal.log"
    payload = os.urandom(3 * 1024 * 1024 + 17)  # in blobs on the stores, not inline
    src = tmp_path / "src.bin"
    src.write_bytes(payload)

    first = WsLocal(data, log_path).start()
    try:
        put = curl("-T", str(src), "-w", "%{http_code}", first.urls["HTTP"] + "kept.bin")
        assert put.stdout.endswith(b"201"), put
    finally:
        assert first.stop(), first.child.log()
    bound = sorted(data.rglob(CLUSTER_FILE))
    assert len(bound) >= 2, "every store was bound at its first use"
    for path in bound:
        path.unlink()
    db = sqlite3.connect(data / "catalog.sqlite")
    with db:
        db.execute("DELETE FROM settings")
    db.close()

    second = WsLocal(data, log_path).start()
    try:
        got = curl(second.urls["HTTP"] + "kept.bin")
        assert hashlib.sha256(got.stdout).hexdigest() == hashlib.sha256(payload).hexdigest()
    finally:
        assert second.stop(), second.child.log()
    log = second.child.log()
    assert "not bound to this cluster automatically" not in log, log
    assert "another cluster" not in log, log
    ids = {json.loads(p.read_bytes())["cluster_id"] for p in sorted(data.rglob(CLUSTER_FILE))}
    assert len(ids) == 1 and len(sorted(data.rglob(CLUSTER_FILE))) == len(bound)
    db = sqlite3.connect(data / "catalog.sqlite")
    assert db.execute("SELECT value FROM settings").fetchall() == [(ids.pop(),)]
    db.close()


def test_wslocal_binds_its_stores_even_when_they_hold_only_blobs_its_catalog_forgot(tmp_path):
    """A store of wslocal's own data directory holding blobs of which the
    catalog records no replica (files deleted within the collection grace
    before the upgrade) is still this cluster's: wslocal binds it, where a
    front end alone would refuse it as possibly another cluster's, and
    wslocal has no --cluster to say otherwise."""
    data = tmp_path / "wsfs-data"
    log_path = tmp_path / "wslocal.log"
    src = tmp_path / "src.bin"
    src.write_bytes(os.urandom(3 * 1024 * 1024 + 17))

    first = WsLocal(data, log_path).start()
    try:
        put = curl("-T", str(src), "-w", "%{http_code}", first.urls["HTTP"] + "gone.bin")
        assert put.stdout.endswith(b"201"), put
    finally:
        assert first.stop(), first.child.log()
    for path in sorted(data.rglob(CLUSTER_FILE)):
        path.unlink()
    db = sqlite3.connect(data / "catalog.sqlite")
    with db:
        db.execute("DELETE FROM settings")
        assert db.execute("DELETE FROM replicas").rowcount >= 2
    db.close()

    second = WsLocal(data, log_path).start()
    try:
        check = curl("-T", str(src), "-w", "%{http_code}", second.urls["HTTP"] + "new.bin")
        assert check.stdout.endswith(b"201"), check
    finally:
        assert second.stop(), second.child.log()
    log = second.child.log()
    assert "not bound to this cluster automatically" not in log, log
    bound = sorted(data.rglob(CLUSTER_FILE))
    assert len(bound) == 3, bound
    assert len({json.loads(p.read_bytes())["cluster_id"] for p in bound}) == 1
