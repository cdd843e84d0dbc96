"""A ``twistd -n wsfront`` child with the options a test gives it, over
``wsstorage`` children and a SQLite catalog with user ``ann``.

For the tests of the plugin itself (TOML configuration, FTPS, HTTPS); the
session-migration tests have their own ``tests.migration_cluster``.  Every
listener is asked for port 0 and read back from the log, so no other
process can take a port first, and readiness is the child holding those
sockets itself (``support.wait_ports``).  Whatever fails, every child is
stopped and reaped before the error propagates.
"""

from __future__ import annotations

import signal
import subprocess
import sys
from collections.abc import Collection, Iterator
from contextlib import contextmanager
from pathlib import Path

from tests.storage_procs import StorageProcess
from tests.support import LoggedChild, python_env, start_all

USER, PASSWORD = "ann", "ann-password-1"

#: "wsfront NAME serves PROTO on IPv4Address(..., port=N)" in the text log.
SERVES = r"wsfront \S+ serves (\w+) on .*?port=(\d+)"

#: Any interface, port chosen by the system: the form every listener takes.
ANY_PORT = "tcp:0:interface=127.0.0.1"


@contextmanager
def storage_with_user(tmp: Path, nodes: int) -> Iterator[tuple[str, list[StorageProcess]]]:
    """``nodes`` storage processes s1.. (started together: one that fails
    stops the others) and a catalog URL with user ann; stopped on exit."""
    storage = start_all([StorageProcess(tmp, f"s{i}") for i in range(1, nodes + 1)])
    try:
        catalog = f"sqlite:///{tmp / 'catalog.sqlite'}"
        added = subprocess.run(
            [sys.executable, "-m", "wsfront.cli", "--catalog", catalog, "user", "add", USER],
            input=PASSWORD, text=True, env=python_env(), capture_output=True,
        )  # fmt: skip
        assert added.returncode == 0, added.stderr
        yield catalog, storage
    finally:
        for s in storage:
            s.stop()


def storage_args(storage: list[StorageProcess]) -> list[str]:
    """``--storage NAME=ENDPOINT`` for each storage process."""
    return [a for s in storage for a in ("--storage", f"{s.name}={s.endpoint}")]


@contextmanager
def running_wsfront(
    tmp: Path, argv: list[str], serves: Collection[str], pattern: str = SERVES
) -> Iterator[tuple[LoggedChild, dict[str, int]]]:
    """Run ``argv`` (a ``twistd ... wsfront`` command) with its log in
    ``tmp/fe.log``; yield it and the port of each protocol in ``serves``
    once it holds them all.  On exit it gets SIGTERM; one that is still
    running 60 s later is killed and, unless the body failed already,
    fails the test."""
    fe = LoggedChild("wsfront", argv, tmp / "fe.log", cwd=tmp).start()
    try:
        yield fe, fe.wait_ports(pattern, serves)
    except BaseException:
        fe.stop()
        raise
    code = fe.stop()
    assert code != -signal.SIGKILL, f"wsfront ignored SIGTERM for 60 s:\n{fe.log()[-3000:]}"
