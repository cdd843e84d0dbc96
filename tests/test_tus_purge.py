"""What a tus client sees of an upload whose catalog row GC purged after
its retention (``purge_uploads``): 404 for HEAD, PATCH and DELETE, as tusd
answers for an upload its expiry removed; before the purge, a completed
upload answers HEAD with its full offset and an expired one 410.  The
committed file and the uploads still live are untouched.  On both catalog
backends."""

from __future__ import annotations

import pytest
import pytest_twisted
from twisted.internet import defer

from tests.http_env import payload
from tests.tus_env import OCTETS, committed, create, sha, start_env, stop_env, tus

pytest_plugins = ["tests.catalog_fixtures"]


@pytest.fixture
def env(tmp_path, catalog_url):
    from twisted.internet import reactor

    started = start_env(reactor, tmp_path, catalog_url=catalog_url)
    e = pytest_twisted.blockon(defer.ensureDeferred(started))
    yield e
    pytest_twisted.blockon(stop_env(e))


def upload_id(location: str) -> str:
    return location.rsplit("/", 1)[1]


@pytest_twisted.ensureDeferred
async def test_a_purged_upload_is_not_found_and_its_file_stays(env):
    data = payload(5000)
    _, done, _ = await create(env, len(data), {"filename": "done.bin"}, data)
    done_url = done["location"]
    _, gone, _ = await create(env, 8, {"filename": "gone.bin"})
    gone_url = gone["location"]
    _, live, _ = await create(env, 8, {"filename": "live.bin"})
    live_url = live["location"]
    for url in (gone_url, live_url):
        status, _, _ = await tus(env, "PATCH", url, {**OCTETS, "Upload-Offset": "0"}, b"1234")
        assert status == 204
    gone_upload = await env.catalog.get_upload(upload_id(gone_url))
    expired = await env.catalog.expire_uploads(gone_upload.expires_at)
    assert [u.upload_id for u in expired] == [gone_upload.upload_id]
    # Within the retention: the completed upload says it is complete (a
    # client that lost the last PATCH's answer learns it), the expired one
    # that it is gone.
    status, headers, _ = await tus(env, "HEAD", done_url)
    assert status == 200 and headers["upload-offset"] == "5000"
    assert (await tus(env, "HEAD", gone_url))[0] == 410

    purged = await env.catalog.purge_uploads(gone_upload.expires_at + 1, 100)
    assert purged.count == 2

    for url in (done_url, gone_url):
        assert (await tus(env, "HEAD", url))[0] == 404
        at_end = {**OCTETS, "Upload-Offset": "5000" if url == done_url else "4"}
        assert (await tus(env, "PATCH", url, at_end))[0] == 404
        assert (await tus(env, "DELETE", url))[0] == 404
    assert sha(await committed(env, "/done.bin")) == sha(data)
    status, headers, _ = await tus(env, "HEAD", live_url)
    assert status == 200 and headers["upload-offset"] == "4"
    status, headers, _ = await tus(
        env, "PATCH", live_url, {**OCTETS, "Upload-Offset": "4"}, b"5678"
    )
    assert status == 204 and headers["upload-offset"] == "8"
    assert await committed(env, "/live.bin") == b"12345678"
