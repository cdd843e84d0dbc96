"""``fsck_confirm.Confirmations`` on its own, each blob's confirmation
a Deferred the test fires: verdicts are handed on in the order the
blobs were added whatever order they end in, few are held waiting for
an earlier one, and no confirmation starts once the lease is lost or
one failed while ``add`` waited for a slot."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import pytest_twisted
from twisted.internet.defer import Deferred, ensureDeferred

from wsfront.maintenance import fsck_confirm
from wsfront.maintenance.fsck_confirm import NO_RECORD, WINDOW, Confirmations

LIMIT = 4


class Gated:
    """``fsck_confirm.confirm`` replaced: each call waits for the test to
    end it (``end(blob_id, verdict)``, or ``fail``)."""

    def __init__(self, monkeypatch) -> None:
        self.waiting: dict[str, Deferred] = {}
        self.started: list[str] = []
        monkeypatch.setattr(fsck_confirm, "confirm", self.confirm)

    async def confirm(self, catalog, stat, blob, nodes, silent):
        self.started.append(blob.blob_id)
        d = self.waiting[blob.blob_id] = Deferred()
        return await d

    def end(self, blob_id: str, verdict) -> None:
        self.waiting.pop(blob_id).callback(verdict)

    def fail(self, blob_id: str, error: Exception) -> None:
        self.waiting.pop(blob_id).errback(error)


def blob(i: int) -> SimpleNamespace:
    return SimpleNamespace(blob_id=f"b{i:04d}")


def missing(node: str) -> dict:
    return {node: (None, 10)}


@pytest_twisted.ensureDeferred
async def test_verdicts_are_handed_on_in_blob_order_and_whole_ones_are_not_kept(monkeypatch):
    gated = Gated(monkeypatch)
    handed: list[tuple[str, object]] = []
    c = Confirmations(None, None, set(), lambda b, v: handed.append((b, v)), LIMIT)
    for i in range(3):
        assert await c.add(blob(i), ["s1"])
    await c.put("b0003", NO_RECORD)
    assert await c.add(blob(4), ["s1"])
    gated.end("b0004", missing("s1"))
    gated.end("b0002", {})  # whole: nothing to hand on, nothing kept
    gated.end("b0001", missing("s2"))
    assert handed == []  # b0000 first
    assert len(c._order) == 4  # b0000 waiting, b0001, b0003, b0004 answered
    gated.end("b0000", None)  # forgotten meanwhile
    await c.finish()
    assert handed == [("b0001", missing("s2")), ("b0003", NO_RECORD), ("b0004", missing("s1"))]
    assert len(c._order) == 0


@pytest_twisted.ensureDeferred
async def test_answers_held_behind_a_slow_blob_are_bounded(monkeypatch):
    """The first blob's confirmation never ends while the others do: no
    more than ``WINDOW`` times the limit are started ahead of it."""
    gated = Gated(monkeypatch)
    handed: list[str] = []
    c = Confirmations(None, None, set(), lambda b, v: handed.append(b), LIMIT)
    assert await c.add(blob(0), ["s1"])
    i = 1
    while True:
        adding = ensureDeferred(c.add(blob(i), ["s1"]))
        if not adding.called:
            break  # waits for room
        gated.end(blob(i).blob_id, missing("s1"))
        i += 1
    assert i == WINDOW * LIMIT and handed == []
    gated.end("b0000", {})
    assert (await adding) is True
    gated.end(blob(i).blob_id, {})
    await c.finish()
    assert handed == [blob(n).blob_id for n in range(1, i)]


@pytest.mark.parametrize("how", ["the lease is lost", "a confirmation failed"])
@pytest_twisted.ensureDeferred
async def test_no_confirmation_starts_after_its_slot_if_meanwhile(monkeypatch, how):
    """``add`` waits for a slot (all taken); meanwhile the lease is lost,
    or a confirmation fails: the slot given, it starts none."""
    gated = Gated(monkeypatch)
    lease = [True]
    c = Confirmations(None, None, set(), lambda b, v: None, LIMIT, lambda: lease[0])
    for i in range(LIMIT):
        assert await c.add(blob(i), ["s1"])
    adding = ensureDeferred(c.add(blob(LIMIT), ["s1"]))
    assert not adding.called
    if how == "the lease is lost":
        lease[0] = False
        gated.end("b0000", {})
    else:
        gated.fail("b0000", RuntimeError("catalog away"))
    assert (await adding) is False
    assert gated.started == [blob(i).blob_id for i in range(LIMIT)]
    for i in range(1, LIMIT):
        gated.end(blob(i).blob_id, {})
    if how == "the lease is lost":
        await c.finish()
    else:
        with pytest.raises(RuntimeError, match="catalog away"):
            await c.finish()


@pytest_twisted.ensureDeferred
async def test_a_blob_let_in_by_an_answer_is_handed_on_after_it(monkeypatch):
    """The reorder buffer full, the check waits to add one more; the
    earliest blob's answer frees the room, and the check, resumed at
    once, adds a blob already answered: it is handed on after the ones
    the answer let through, not before."""
    gated = Gated(monkeypatch)
    handed: list[str] = []
    c = Confirmations(None, None, set(), lambda b, v: handed.append(b), 1)
    assert await c.add(blob(0), ["s1"])
    for i in range(1, WINDOW):
        await c.put(blob(i).blob_id, NO_RECORD)
    adding = ensureDeferred(c.put(blob(WINDOW).blob_id, NO_RECORD))
    assert not adding.called  # no room
    gated.end("b0000", missing("s1"))
    await adding
    await c.finish()
    assert handed == [blob(i).blob_id for i in range(WINDOW + 1)]
