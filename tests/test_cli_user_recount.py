"""``wsfs user recount``: pending bytes counted again from the live
uploads, for a count a front end of the code before schema 12 left wrong
(docs/catalog.md, Schema).  A real SQLite catalog, the real command."""

from __future__ import annotations

import json
import sqlite3

import pytest_twisted
from twisted.internet import reactor

from tests.test_cli import wsfs
from wsfront.catalog import open_catalog


@pytest_twisted.ensureDeferred
async def test_user_recount_counts_every_users_pending_bytes_again(tmp_path):
    path = tmp_path / "catalog.sqlite"
    url = f"sqlite:///{path}"
    cat = open_catalog(reactor, url)
    try:
        await cat.add_user("alice", "pw", quota_bytes=1000)
        await cat.add_user("bob", "pw")
        up = await cat.begin_upload(
            "alice", "/alice/f", base_length=0, blob_id="b1", replicas=["s1"],
            wanted_replicas=1, owner="fe1", expires_at=cat._clock() + 600,
        )  # fmt: skip
        await cat.checkpoint(up.upload_id, 1, 60)
    finally:
        await cat.close()
    # What a front end of the older code leaves: a charge never given back.
    with sqlite3.connect(path) as db:
        db.execute("UPDATE users SET pending_bytes = 500 WHERE name = 'bob'")
        db.execute("UPDATE users SET pending_bytes = 0 WHERE name = 'alice'")
    one = wsfs(url, "--json", "user", "recount", "bob")
    assert one.returncode == 0, one.stderr
    assert json.loads(one.stdout) == [{"name": "bob", "pending_bytes": 0, "was": 500}]
    every = wsfs(url, "user", "recount")
    assert every.returncode == 0, every.stderr
    assert every.stdout == "pending of alice: 60 B (was 0 B)\npending of bob: 0 B\n"
    listed = json.loads(wsfs(url, "--json", "user", "list").stdout)
    assert {u["name"]: u["pending_bytes"] for u in listed} == {"alice": 60, "bob": 0}
    missing = wsfs(url, "user", "recount", "nobody")
    assert missing.returncode != 0 and "nobody" in missing.stderr
