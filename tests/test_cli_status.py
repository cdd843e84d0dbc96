"""``wsfs status`` says how old each storage server's state is, and says
so plainly when no front end is alive to keep the states current (a
server SIGKILLed since still shows ``up``).  A real ``wsfs`` process on
SQLite and PostgreSQL catalogs."""

from __future__ import annotations

import json
import sys
import time

import pytest_twisted

from tests.support import python_env
from wsfront.catalog import open_catalog
from wsfront.maintenance.lease import liveness_lease

pytest_plugins = ["tests.catalog_fixtures"]


async def wsfs(url: str, *args: str) -> tuple[str, str, int]:
    from twisted.internet import reactor
    from twisted.internet.utils import getProcessOutputAndValue

    out, err, code = await getProcessOutputAndValue(
        sys.executable,
        ["-m", "wsfront.cli", "--catalog", url, *args],
        env=python_env(),
        reactor=reactor,
    )
    return out.decode(), err.decode(), code


def row(out: str, name: str) -> list[str]:
    [line] = [line for line in out.splitlines() if line.startswith(name + " ")]
    return line.split()


@pytest_twisted.ensureDeferred
async def test_status_shows_each_state_s_age_and_whether_a_front_end_keeps_them(catalog_url):
    from twisted.internet import reactor

    catalog = open_catalog(reactor, catalog_url)
    try:
        await catalog.register_node("s1", "tcp:127.0.0.1:7001")
        await catalog.register_node("s2", "tcp:127.0.0.1:7002")
        # fe-a recorded s1 up 5 minutes ago, then was killed: its lease lapsed.
        await catalog.set_node_health("s1", "up", 1 << 30, 2 << 30, time.time() - 300)
        assert await catalog.acquire_lease(liveness_lease("fe-a"), "fe-a", -240)

        out, err, code = await wsfs(catalog_url, "status")
        assert code == 0, err
        assert row(out, "NAME")[:6] == ["NAME", "ENDPOINT", "STATE", "SEEN", "FREE", "TOTAL"]
        assert row(out, "s1")[:5] == ["s1", "tcp:127.0.0.1:7001", "up", "5m", "ago"]
        assert row(out, "s2")[:4] == ["s2", "tcp:127.0.0.1:7002", "unknown", "never"]
        assert out.splitlines()[-1] == (
            "no front end is alive (the last, fe-a, stopped renewing 4m ago): "
            "each STATE is as last recorded, SEEN ago, and may be out of date"
        )
        status = json.loads((await wsfs(catalog_url, "--json", "status"))[0])
        assert status["front_ends_alive"] == []

        # A live front end keeps them current: no note.
        assert await catalog.acquire_lease(liveness_lease("fe-b"), "fe-b", 60)
        await catalog.set_node_health("s1", "up", 1 << 30, 2 << 30, time.time() - 3)
        out, err, code = await wsfs(catalog_url, "status")
        assert code == 0, err
        assert row(out, "s1")[3:5] in (["3s", "ago"], ["4s", "ago"], ["5s", "ago"])
        assert "no front end" not in out
        status = json.loads((await wsfs(catalog_url, "--json", "status"))[0])
        assert status["front_ends_alive"] == ["fe-b"]
    finally:
        await catalog.close()


@pytest_twisted.ensureDeferred
async def test_status_names_the_cluster_id_its_stores_are_bound_to(catalog_url):
    """The id a store's CLUSTER file must hold (a store of another is
    ``foreign``): on the line after the table (the totals stay first, the
    table's header second and a note last, where scripts read them; the
    tests that read them there are unchanged) and in ``--json``; before any front
    end made one, ``none yet`` and null, and ``status`` makes none."""
    from twisted.internet import reactor

    catalog = open_catalog(reactor, catalog_url)
    try:
        out, err, code = await wsfs(catalog_url, "status")
        assert code == 0, err
        lines = out.splitlines()
        assert lines[0].startswith("files: ") and lines[1] == "(none)", out  # no server yet
        assert lines[2:] == ["cluster: none yet (the first front end's start makes it)"], out
        status = json.loads((await wsfs(catalog_url, "--json", "status"))[0])
        assert status["cluster_id"] is None

        cluster = await catalog.cluster_id()  # what a front end's start does
        out, err, code = await wsfs(catalog_url, "status")
        assert code == 0, err
        assert out.splitlines()[2:] == [f"cluster: {cluster}"], out
        status = json.loads((await wsfs(catalog_url, "--json", "status"))[0])
        assert status["cluster_id"] == cluster
    finally:
        await catalog.close()
