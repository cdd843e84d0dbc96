"""Counting (and holding) fsck's ``stat``s in flight, for the tests of
its confirmations (``fsck_confirm``)."""

from __future__ import annotations

from twisted.internet.defer import Deferred

from wsfront.maintenance import fsck_confirm
from wsfront.maintenance.fsck_confirm import CONFIRM_CONCURRENCY


class InFlight:
    """Each server's ``stat``s under way now, and the most at once.  The
    stats sent are held (none answered) until every slot of the check's
    confirmations is taken: the most are then under way at once,
    whatever the pace of the catalog and the servers (unless ``hold``
    is false)."""

    def __init__(self, env, monkeypatch, hold: bool = True) -> None:
        self.now = dict.fromkeys(env.nodes, 0)
        self.peak = dict.fromkeys(env.nodes, 0)
        self.held: list[Deferred] | None = [] if hold else None
        self.started = 0
        for node in env.nodes:
            client = env.transfers.pool.client(node)
            monkeypatch.setattr(client, "stat", self._counted(node, client.stat))
        real_confirm = fsck_confirm.confirm

        def confirm(*args):
            self.started += 1
            if self.started == CONFIRM_CONCURRENCY:
                self.release()
            return real_confirm(*args)

        monkeypatch.setattr(fsck_confirm, "confirm", confirm)

    def release(self) -> None:
        held, self.held = self.held, None
        for d in held or []:
            d.callback(None)

    def _counted(self, node: str, real):
        def stat(blob_id):
            self.now[node] += 1
            self.peak[node] = max(self.peak[node], self.now[node])

            def done(result):
                self.now[node] -= 1
                return result

            if self.held is None:
                return real(blob_id).addBoth(done)
            gate = Deferred()
            self.held.append(gate)
            return gate.addCallback(lambda _: real(blob_id)).addBoth(done)

        return stat

    @property
    def total(self) -> int:
        return sum(self.now.values())
