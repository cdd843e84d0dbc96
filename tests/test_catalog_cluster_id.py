"""Contract: a catalog's cluster id (schema 10) is made once, race-free,
on both backends: two catalogs opened on one database that ask at the
same moment get the same id; a rebuilt catalog can adopt another."""

from __future__ import annotations

import pytest_twisted
from twisted.internet import defer, reactor

from wsfront.catalog import open_catalog

pytest_plugins = ["tests.catalog_fixtures"]


@pytest_twisted.ensureDeferred
async def test_the_cluster_id_is_made_once_and_kept(catalog, catalog_url):
    first = await catalog.cluster_id()
    assert len(first) == 32 and int(first, 16) >= 0
    assert await catalog.cluster_id() == first
    again = open_catalog(reactor, catalog_url)
    try:
        assert await again.cluster_id() == first
    finally:
        await again.close()


@pytest_twisted.ensureDeferred
async def test_front_ends_that_ask_at_once_agree(catalog_url):
    """Of several front ends starting on a catalog without an id, one
    makes it and every one reads that one."""
    cats = [open_catalog(reactor, catalog_url) for _ in range(4)]
    try:
        ids = await defer.gatherResults([c.cluster_id() for c in cats for _ in range(3)])
        assert len(set(ids)) == 1
    finally:
        for c in cats:
            await c.close()


@pytest_twisted.ensureDeferred
async def test_a_catalog_adopts_another_id(catalog):
    await catalog.cluster_id()
    await catalog.adopt_cluster_id("c" * 32)
    assert await catalog.cluster_id() == "c" * 32
