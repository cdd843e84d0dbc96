"""Path resolution (``wsfront.catalog._rows.resolve``): one statement per
component below the root, whose own row is read only for ``/`` itself;
the errors of a missing or non-directory ancestor as before."""

from __future__ import annotations

import pytest
import pytest_twisted

from tests.catalog_fixtures import catalog, catalog_url, clock  # noqa: F401
from wsfront.catalog import _rows
from wsfront.catalog._db import Tx
from wsfront.catalog.errors import NotADirectory, NotFound
from wsfront.catalog.names import split_path


class Counted(Tx):
    """A Tx that counts the statements it runs."""

    statements = 0

    def one(self, sql, *params):
        Counted.statements += 1
        return super().one(sql, *params)


def _resolve(catalog, path):  # noqa: F811
    def fn(tx):
        Counted.statements = 0
        row = _rows.resolve(Counted(tx.backend, tx._cursor), split_path(path))
        return (None if row is None else (row["inode"], row["kind"])), Counted.statements

    return catalog._runner.run(fn, write=False)


@pytest_twisted.ensureDeferred
async def test_a_path_costs_one_statement_per_component(catalog):  # noqa: F811
    await catalog.mkdir("/a")
    await catalog.mkdir("/a/b")
    (inode, kind), statements = await _resolve(catalog, "/a/b")
    assert kind == "dir" and inode != _rows.ROOT
    assert statements == 2
    assert await _resolve(catalog, "/") == ((_rows.ROOT, "dir"), 1)
    assert await _resolve(catalog, "/a/none") == (None, 2)


@pytest_twisted.ensureDeferred
async def test_missing_and_file_ancestors_are_refused_as_before(catalog, clock):  # noqa: F811
    await catalog.mkdir("/d")
    with pytest.raises(NotFound, match="/none does not exist"):
        await _resolve(catalog, "/none/x")
    await catalog.mkdir("/d/e")
    await catalog.rename("/d/e", "/f")
    with pytest.raises(NotFound):
        await _resolve(catalog, "/d/e/x")
    assert (await _resolve(catalog, "/f"))[0][1] == "dir"
    started = await catalog.start_upload(
        "u", "/d/file", offset=0, blob_id="b1", replicas=["s1"], wanted_replicas=1, owner="fe",
        expires_at=clock.now + 60,
    )  # fmt: skip
    await catalog.commit_upload(started.upload.upload_id, started.upload.epoch, 0)
    with pytest.raises(NotADirectory, match="/d/file is not a directory"):
        await _resolve(catalog, "/d/file/x")
