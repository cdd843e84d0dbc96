"""A session that failed for the catalog's sake (its commit refused as
unavailable) is still marked interrupted once the catalog is back: the
writer tries again on the reactor instead of leaving it ``active`` (shown
as live in ``wsfs sessions``, owned by this front end) until it expires."""

from __future__ import annotations

import pytest
import pytest_twisted
from twisted.internet import defer
from twisted.logger import globalLogPublisher

from tests.catalog_outage import make_writes_wait_briefly, write_locked
from tests.transfer_env import Feeder, TransferEnv
from wsfront.catalog import errors as catalog_errors


@pytest.fixture
def env(tmp_path):
    from twisted.internet import reactor

    e = TransferEnv(reactor, tmp_path, backend="fake")
    e = pytest_twisted.blockon(defer.ensureDeferred(e.start()))
    yield e
    pytest_twisted.blockon(defer.ensureDeferred(e.stop()))


def logged(fmt_start: str) -> defer.Deferred:
    """Fires with the first log event whose format starts with ``fmt_start``."""
    d: defer.Deferred = defer.Deferred()

    def observe(event):
        if not d.called and (event.get("log_format") or "").startswith(fmt_start):
            globalLogPublisher.removeObserver(observe)
            d.callback(event)

    globalLogPublisher.addObserver(observe)
    return d


@pytest_twisted.ensureDeferred
async def test_an_interruption_the_locked_catalog_refused_is_recorded_once_it_is_free(env):
    from twisted.internet import reactor

    session = await env.transfers.open_write(env.user, "/f", 0)
    await Feeder(env.reactor, session, b"abc").start()
    await session.checkpoint()
    await make_writes_wait_briefly(env.catalog)
    retrying = logged("upload {id} could not record its interruption, again in")
    recorded = logged("upload {id} recorded its interruption")
    with write_locked(env.catalog_dir / "catalog.sqlite"):
        with pytest.raises(catalog_errors.CatalogUnavailable):
            await session.finish()
        # The first attempt met the lock too.  Bounded so the old code
        # (one attempt, no retry) fails here instead of hanging.
        await retrying.addTimeout(30, reactor)
        assert (await env.catalog.get_upload(session.upload_id)).state == "active"
    await recorded.addTimeout(30, reactor)
    up = await env.catalog.get_upload(session.upload_id)
    assert (up.state, up.checkpoint) == ("interrupted", 3)
