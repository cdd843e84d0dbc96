"""The status page in a real headless chromium: an administrator logs in
with Basic credentials, watches a live upload's progress bar move, sees a
download fail over when the storage server serving it dies (and that server
go down), and the page runs under its CSP without a single violation.  The
screenshot is kept in ``artifacts/`` and under the test's tmp dir."""

from __future__ import annotations

import pytest
import pytest_twisted
from selenium.webdriver.common.by import By
from twisted.internet import defer

from tests.http_env import MiB, payload
from tests.status_browser import Browser
from tests.status_env import ADMIN, ADMIN_PASSWORD, StatusEnv
from tests.support import REPO, require_tool
from tests.transfer_env import Feeder, PausingCollector


@pytest.fixture
def env(tmp_path):
    from twisted.internet import reactor

    require_tool("chromium")
    e = pytest_twisted.blockon(defer.ensureDeferred(StatusEnv(reactor, tmp_path).start()))
    yield e
    pytest_twisted.blockon(defer.ensureDeferred(e.stop()))


def state_of(driver, css: str) -> str | None:
    found = driver.find_elements(By.CSS_SELECTOR, css)
    return found[0].get_attribute("data-state") if found else None


def bar_value(driver, upload_id: str) -> float | None:
    """The value of an upload's progress bar on the page (None: no bar)."""
    bars = driver.find_elements(
        By.CSS_SELECTOR, f'#sessions tr[data-upload="{upload_id}"] progress'
    )
    return float(bars[0].get_attribute("value")) if bars else None


def bar_reaches(upload_id: str, at_least: int):
    def condition(driver):
        value = bar_value(driver, upload_id)
        return value if value is not None and value >= at_least else False

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
    title = await browser.call(lambda d: d.find_element(By.ID, "front-end").text)
    assert title == "fe-a"

    # A slow upload, driven a step at a time: the bar follows each step.
    data = payload(4 * MiB)
    session = await env.transfers.open_write(env.user, "/watched.bin", 0, declared_length=len(data))
    await Feeder(env.reactor, session, data[:MiB]).start()
    first = await browser.wait(bar_reaches(session.upload_id, MiB), message="no progress bar")
    assert first == MiB
    maximum = await browser.call(
        lambda d: d.find_element(
            By.CSS_SELECTOR, f'tr[data-upload="{session.upload_id}"] progress'
        ).get_attribute("max")
    )
    assert float(maximum) == len(data)
    await Feeder(env.reactor, session, data[MiB : 3 * MiB]).start()
    second = await browser.wait(bar_reaches(session.upload_id, 3 * MiB), message="bar stuck")
    assert second == 3 * MiB > first
    await browser.screenshot(
        REPO / "artifacts" / "status-upload.png", tmp_path / "status-upload.png"
    )
    await Feeder(env.reactor, session, data[3 * MiB :]).start()
    await session.finish()
    await browser.wait(
        lambda d: not d.find_elements(By.CSS_SELECTOR, "#sessions tbody tr"),
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
        lambda d: [
            e.text for e in d.find_elements(By.CSS_SELECTOR, '#events li[data-kind="failover"]')
        ],
        message="no failover event on the page",
    )
    assert f"moved to {handle.stream.serving}" in text[0]
    await browser.wait(
        lambda d: state_of(d, f'#nodes tr[data-node="{victim}"] .state') == "down",
        message=f"{victim} never showed as down",
    )
    await browser.wait(
        lambda d: int(d.find_element(By.ID, "chart").get_attribute("data-points") or 0) >= 2,
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
