"""pytest configuration shared by every test module."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from tests.support import stop_leftovers


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_teardown(item: pytest.Item, nextitem: pytest.Item | None) -> Iterator[Any]:
    """After a module's last test (its module-scoped fixtures are gone by
    then), stop any harness child (storage server, front end) still running:
    a fixture whose setup failed half-way never runs its teardown, and its
    processes would otherwise outlive the test run."""
    yield
    if nextitem is None or nextitem.module is not item.module:
        left = stop_leftovers()
        if left:
            item.warn(pytest.PytestWarning(f"stopped leftover processes: {', '.join(left)}"))


@pytest.fixture
def ftp(tmp_path: Any) -> Iterator[Any]:
    """An in-process FTP server on a real transfer layer (``tests.ftp_env``),
    stopped after the test; modules that need other settings define their own."""
    import pytest_twisted
    from twisted.internet import defer, reactor

    from tests.ftp_env import FTPEnv

    env = FTPEnv(reactor, tmp_path)
    pytest_twisted.blockon(defer.ensureDeferred(env.start()))
    yield env
    pytest_twisted.blockon(defer.ensureDeferred(env.stop()))
