"""The status page in a real headless chromium: an administrator logs in
with Basic credentials, watches a live upload's progress bar move, sees a
download fail over when the storage server serving it dies (and that server
go down), and the page runs under its CSP without a single violation.  The
screenshot is kept in ``artifacts/`` and under the test's tmp dir."""

from __future__ import annotations

import pytest
import pytest_twisted
from twisted.internet import defer

from tests.http_env import MiB, payload
from tests.status_browser import Browser
from tests.status_env import ADMIN, ADMIN_PASSWORD, StatusEnv
from tests.support import REPO, missing, require_tool
from tests.transfer_env import Feeder, PausingCollector


@pytest.fixture
def env(tmp_path):
    from twisted.internet import reactor

    require_tool("chromium")
    try:
        import selenium  # noqa: F401
    except ImportError:
        missing("selenium is not installed (pip install selenium)")
    e = pytest_twisted.blockon(defer.ensureDeferred(StatusEnv(reactor, tmp_path).start()))
    yield e
    pytest_twisted.blockon(defer.ensureDeferred(e.stop()))


# The page redraws every second, so elements found by Selenium can go stale
# between find and read; each read is one script run in the page instead.


def query(driver, css: str, expression: str):
    """``expression`` of the first element matching ``css`` (``e``), or None."""
    return driver.execute_script(
        f"const e = document.querySelector(arguments[0]); return e ? ({expression}) : null;",
        css,
    )


def texts(driver, css: str) -> list[str]:
    return driver.execute_script(
        "return [...document.querySelectorAll(arguments[0])].map(e => e.textContent);", css
    )


def state_of(driver, css: str) -> str | None:
    return query(driver, css, "e.dataset.state")


def bar_reaches(upload_id: str, at_least: int):
    """Condition: the upload's progress bar shows ``at_least``; fires with (value, max)."""

    def condition(driver):
        bar = query(driver, f'#sessions tr[data-upload="{upload_id}"] progress', "[e.value, e.max]")
        return bar if bar is not None and bar[0] >= at_least else False

    return condition


@pytest.mark.slow
@pytest.mark.timeout(180)
@pytest_twisted.ensureDeferred
async def test_admin_watches_an_upload_progress_and_a_failover_live_in_chromium(env, tmp_path):
    browser = await Browser.start(tmp_path / "chromium-profile")
    try:
        await _watch(env, browser, tmp_path)
    finally:
        await browser.quit()


async def _watch(env, browser: Browser, tmp_path) -> None:
    host = env.base.removeprefix("http://")
    await browser.get(f"http://{ADMIN}:{ADMIN_PASSWORD}@{host}/-/status")
    await browser.wait(
        lambda d: state_of(d, "#connection") == "live", message="the page never went live"
    )
    title = await browser.call(lambda d: query(d, "#front-end", "e.textContent"))
    assert title == "fe-a"

    # A slow upload, driven a step at a time: the bar follows each step.
    data = payload(4 * MiB)
    session = await env.transfers.open_write(env.user, "/watched.bin", 0, declared_length=len(data))
    await Feeder(env.reactor, session, data[:MiB]).start()
    first, maximum = await browser.wait(
        bar_reaches(session.upload_id, MiB), message="no progress bar"
    )
    assert (first, maximum) == (MiB, len(data))
    await Feeder(env.reactor, session, data[MiB : 3 * MiB]).start()
    second, _ = await browser.wait(bar_reaches(session.upload_id, 3 * MiB), message="bar stuck")
    assert second == 3 * MiB > first
    await browser.screenshot(
        REPO / "artifacts" / "status-upload.png", tmp_path / "status-upload.png"
    )
    await Feeder(env.reactor, session, data[3 * MiB :]).start()
    await session.finish()
    await browser.wait(
        lambda d: not texts(d, "#sessions tbody tr"),
        message="the finished upload stayed on the page",
    )

    # A download whose storage server dies mid-stream fails over, visibly.
    await env.upload("/big.bin", payload(8 * MiB))
    handle = await env.transfers.open_read(env.user, "/big.bin")
    sink = PausingCollector(pause_at=MiB)
    done = handle.stream.start(sink)
    await sink.paused
    victim = handle.stream.serving
    await env.transfer.kill(victim)
    sink.producer.resumeProducing()
    await done
    assert len(sink.data) == 8 * MiB and handle.stream.failovers == 1
    text = await browser.wait(
        lambda d: texts(d, '#events li[data-kind="failover"]'),
        message="no failover event on the page",
    )
    assert f"moved to {handle.stream.serving}" in text[0]
    await browser.wait(
        lambda d: state_of(d, f'#nodes tr[data-node="{victim}"] .state') == "down",
        message=f"{victim} never showed as down",
    )
    await browser.wait(
        lambda d: int(query(d, "#chart", "e.dataset.points") or 0) >= 2,
        message="no throughput chart",
    )
    name = "status-page.png"
    png = await browser.screenshot(REPO / "artifacts" / name, tmp_path / name)
    assert png.startswith(b"\x89PNG")
    console = await browser.console()
    violations = [m["message"] for m in console if "Content Security Policy" in m["message"]]
    assert violations == []
    errors = [m["message"] for m in console if m["level"] == "SEVERE"]
    assert errors == []
