"""A headless Debian chromium driven by Selenium, for the status page tests.

Selenium's calls block, and the front end under test runs in this process's
reactor, so every browser call runs in a thread (``deferToThread``) while
the reactor keeps serving the page.  Waiting is Selenium's ``WebDriverWait``
on a condition, never a sleep.
"""

from __future__ import annotations

from pathlib import Path

from twisted.internet.threads import deferToThread

from tests.support import require_tool

CHROME_ARGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--window-size=1280,1400",
)


class Browser:
    """One chromium with its own profile folder."""

    def __init__(self, driver) -> None:
        self.driver = driver

    @classmethod
    async def start(cls, profile: Path) -> Browser:
        chromium = require_tool("chromium")
        chromedriver = require_tool("chromedriver")
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service

        options = webdriver.ChromeOptions()
        options.binary_location = chromium
        for arg in (*CHROME_ARGS, f"--user-data-dir={profile}"):
            options.add_argument(arg)
        options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
        driver = await deferToThread(
            webdriver.Chrome, service=Service(chromedriver), options=options
        )
        return cls(driver)

    def call(self, fn, *args, **kw):
        """Run ``fn(driver, *args)`` in a thread; a Deferred of its result."""
        return deferToThread(fn, self.driver, *args, **kw)

    def get(self, url: str):
        return deferToThread(self.driver.get, url)

    def wait(self, condition, timeout: float = 30.0, message: str = ""):
        """Fire with ``condition(driver)``'s first truthy value."""
        from selenium.webdriver.support.ui import WebDriverWait

        def run():
            return WebDriverWait(self.driver, timeout, poll_frequency=0.1).until(condition, message)

        return deferToThread(run)

    def screenshot(self, *paths: Path):
        def run():
            png = self.driver.get_screenshot_as_png()
            for path in paths:
                path.parent.mkdir(parents=True, exist_ok=True)
                path.write_bytes(png)
            return png

        return deferToThread(run)

    def console(self):
        """The browser console messages since the last call."""
        return deferToThread(self.driver.get_log, "browser")

    def quit(self):
        return deferToThread(self.driver.quit)
