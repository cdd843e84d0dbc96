"""An upload whose replicas all run out of space: the client is told the
storage is full (HTTP 507, FTP 452), not to retry later as when they are
down, and the upload stays pending, resumable once there is room; a new
upload with nothing of it durable yet is discarded instead (nothing to
resume)."""

from __future__ import annotations

import os

import pytest
import pytest_twisted
from twisted.internet import defer

from tests.transfer_env import Feeder, TransferEnv
from wsfront.catalog.records import ABORTED, INTERRUPTED
from wsfront.transfer.errors import NoReplicasAvailable, StorageFull

MiB = 1 << 20


@pytest.fixture
def env(tmp_path):
    from twisted.internet import reactor

    e = TransferEnv(reactor, tmp_path, backend="fake")
    e = pytest_twisted.blockon(defer.ensureDeferred(e.start()))
    yield e
    pytest_twisted.blockon(defer.ensureDeferred(e.stop()))


async def _failure(env, session, data: bytes) -> Exception:
    failed = session.when_failed()
    await Feeder(env.reactor, session, data).start()
    try:
        await failed
    except Exception as e:
        return e
    raise AssertionError("the upload did not fail")


@pytest_twisted.ensureDeferred
async def test_every_replica_full_is_storage_full_and_the_upload_stays_pending(env):
    session = await env.transfers.open_write(env.user, "/big.bin", 0)
    await Feeder(env.reactor, session, os.urandom(MiB)).start()
    await session.checkpoint()
    for node in session.replicas:
        env.cluster.nodes[node].capacity = env.cluster.nodes[node].used_bytes() + MiB
    error = await _failure(env, session, os.urandom(4 * MiB))
    assert isinstance(error, StorageFull), error
    assert session.left_pending and not session.discarded
    await session.when_recorded()  # the catalog update _fail started
    upload = await env.catalog.get_upload(session.upload_id)
    assert (upload.state, upload.checkpoint) == (INTERRUPTED, MiB)
    assert env.transfers.pending_per_user.count("alice") == 1


@pytest_twisted.ensureDeferred
async def test_every_replica_full_before_anything_was_durable_discards_a_new_upload(env):
    session = await env.transfers.open_write(env.user, "/big.bin", 0)
    for node in session.replicas:
        env.cluster.nodes[node].capacity = MiB
    error = await _failure(env, session, os.urandom(4 * MiB))
    assert isinstance(error, StorageFull), error
    assert session.discarded and not session.left_pending
    await session.when_recorded()  # the catalog update _fail started
    upload = await env.catalog.get_upload(session.upload_id)
    assert upload.state == ABORTED
    assert await env.catalog.find_upload("/alice/big.bin") is None
    # Its blob is left to GC, as any aborted upload's.
    assert upload.blob_id in [b.blob_id for b in await env.catalog.collectable_blobs()]
    assert env.transfers.pending_per_user.count("alice") == 0


@pytest_twisted.ensureDeferred
async def test_a_full_replica_and_a_dead_one_is_still_storage_unavailable(env):
    session = await env.transfers.open_write(env.user, "/big.bin", 0)
    full, dead = session.replicas
    env.cluster.nodes[full].capacity = MiB
    failed = session.when_failed()
    feeding = Feeder(env.reactor, session, os.urandom(4 * MiB)).start()
    env.reactor.callLater(0, env.cluster.nodes[dead].kill)
    await feeding
    with pytest.raises(NoReplicasAvailable) as caught:
        await failed
    assert not isinstance(caught.value, StorageFull)
    assert session.left_pending


@pytest_twisted.ensureDeferred
async def test_a_resume_of_known_size_with_room_nowhere_leaves_the_upload_as_it_was(env):
    # An upload interrupted at 1 MiB; its client resumes it announcing 8
    # MiB more, which no server has room for: refused before the takeover
    # (no epoch bump, no fence), so the upload stays resumable as it was.
    session = await env.transfers.open_write(env.user, "/big.bin", 0)
    await Feeder(env.reactor, session, os.urandom(MiB)).start()
    await session.interrupt()
    before = await env.catalog.get_upload(session.upload_id)
    for node in env.cluster.nodes.values():
        node.capacity = node.used_bytes() + 4 * MiB
    await env.transfers.pool.probe_all()
    for check in (None, lambda view: None):  # with an adapter's check (HTTP PUT) or not
        with pytest.raises(StorageFull):
            await env.transfers.open_write(
                env.user, "/big.bin", MiB, expected_size=9 * MiB, check=check
            )
    after = await env.catalog.get_upload(session.upload_id)
    assert (after.epoch, after.state, after.checkpoint) == (before.epoch, INTERRUPTED, MiB)
    # A resume that fits (or of unknown size) takes it over as before.
    resumed = await env.transfers.open_write(env.user, "/big.bin", MiB, expected_size=2 * MiB)
    assert resumed.session.epoch == before.epoch + 1
    await Feeder(env.reactor, resumed, os.urandom(MiB)).start()
    version = await resumed.finish()
    assert version.size == 2 * MiB


async def _interrupted_at_one_mib(env):
    session = await env.transfers.open_write(env.user, "/big.bin", 0)
    await Feeder(env.reactor, session, os.urandom(MiB)).start()
    await session.interrupt()


@pytest_twisted.ensureDeferred
async def test_a_resume_without_a_check_is_not_charged_for_its_first_choice(env):
    """A tus PATCH or an FTP REST+STOR of known size finds the pending
    upload in start_upload, after choosing servers for a new blob it then
    does not make: that choice must not hold their room, or the takeover
    finds the servers full of its own phantom bytes.  Two of three servers
    have room for the 4 MiB left (the third nearly full): the resume goes
    on, on both, where it was refused StorageFull (507/452)."""
    await _interrupted_at_one_mib(env)
    nodes = list(env.cluster.nodes.values())
    for node in nodes:
        node.capacity = node.used_bytes() + 6 * MiB
    nodes[-1].capacity = nodes[-1].used_bytes() + MiB // 2
    await env.transfers.pool.probe_all()
    resumed = await env.transfers.open_write(
        env.user, "/big.bin", MiB, expected_size=5 * MiB, resume=True
    )
    assert sorted(resumed.replicas) == sorted(n.name for n in nodes[:-1])
    placed = {n.name: n.placed_bytes for n in env.transfers.pool.nodes()}
    assert placed == {nodes[0].name: 4 * MiB, nodes[1].name: 4 * MiB, nodes[2].name: 0}
    await resumed.interrupt()


@pytest.mark.parametrize("checked", [False, True], ids=["tus-or-ftp", "http-put"])
@pytest_twisted.ensureDeferred
async def test_a_resume_of_an_upload_still_streaming_here_is_not_refused_for_its_own_room(
    env, checked
):
    """A client whose connection dropped unnoticed resumes its upload of
    known size while its old session still streams here: the room that
    session holds until it ends (its bytes still to come) is the resume's
    own, given back by the takeover's fence, not another upload's.  Every
    server has room for the whole upload once: the resume goes on, where it
    was refused StorageFull for the bytes it is about to send itself."""
    nodes = list(env.cluster.nodes.values())
    for node in nodes:
        node.capacity = node.used_bytes() + 6 * MiB
    nodes[-1].capacity = nodes[-1].used_bytes() + MiB // 2
    await env.transfers.pool.probe_all()
    old = await env.transfers.open_write(env.user, "/big.bin", 0, expected_size=5 * MiB)
    assert sorted(old.replicas) == sorted(n.name for n in nodes[:-1])
    await Feeder(env.reactor, old, os.urandom(MiB)).start()
    await old.checkpoint()
    assert old.state == "streaming" and old.durable == MiB
    resumed = await env.transfers.open_write(
        env.user, "/big.bin", MiB, expected_size=5 * MiB, resume=True,
        check=(lambda view: None) if checked else None,
    )  # fmt: skip
    assert old.state == "fenced"
    assert sorted(resumed.replicas) == sorted(n.name for n in nodes[:-1])
    await Feeder(env.reactor, resumed, os.urandom(4 * MiB)).start()
    version = await resumed.finish()
    assert version.size == 5 * MiB
    assert all(n.holds == {} for n in env.transfers.pool.nodes())
