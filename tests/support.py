"""Shared helpers for tests: required tools and services, spawning processes.

A test that needs an outside tool (curl, lftp, aria2c, chromium) or service
(PostgreSQL) asks for it here.  On a developer's machine without it the test
is skipped with the reason; under ``CI=true`` it fails instead, because CI
must provide everything (see ``.ci/run``).
"""

from __future__ import annotations

import os
import random
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Collection, Iterable
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import pytest

REPO = Path(__file__).resolve().parent.parent
DEFAULT_POSTGRES = "postgresql://postgres@127.0.0.1:5432/test"


def in_ci() -> bool:
    return os.environ.get("CI", "").lower() in ("1", "true", "yes")


def missing(reason: str) -> None:
    """Skip (developer machine) or fail (CI) for a missing tool or service."""
    if in_ci():
        pytest.fail(f"CI must provide this: {reason}", pytrace=False)
    pytest.skip(reason)


def require_tool(name: str) -> str:
    """The absolute path of command ``name``, or skip/fail when it is absent."""
    path = shutil.which(name)
    if path is None:
        missing(f"{name} is not installed (apt-get install {name})")
    return path


def postgres_url() -> str:
    """The PostgreSQL server tests use, or skip/fail when none answers."""
    url = os.environ.get("WSFS_TEST_POSTGRES", DEFAULT_POSTGRES)
    parsed = urlparse(url)
    try:
        with socket.create_connection((parsed.hostname or "127.0.0.1", parsed.port or 5432), 2):
            pass
    except OSError as e:
        missing(f"no PostgreSQL answers at {url} ({e}); set WSFS_TEST_POSTGRES")
    return url


def python_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    """Environment for a child Python process that imports this checkout."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(
        [str(REPO)] + ([env["PYTHONPATH"]] if env.get("PYTHONPATH") else [])
    )
    env.pop("WSFS_FAILPOINTS", None)
    env.pop("WSFS_FAILPOINT_LOG", None)
    if extra:
        env.update(extra)
    return env


#: twistd proper (``python -m twisted`` is the newer ``twist`` runner, which
#: has no --nodaemon or --pidfile).
TWISTD = [sys.executable, "-c", "from twisted.scripts.twistd import run; run()"]


def twistd_argv(plugin: str, *args: str) -> list[str]:
    """argv that runs ``twistd -n PLUGIN ARGS`` with this checkout's plugins."""
    return [*TWISTD, "--nodaemon", "--pidfile=", plugin, *args]


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago (another process
    may take it before the caller binds it: see ``listening_ports``).

    Picked below the kernel's ephemeral range, not by binding port 0: the
    ports the system hands out (to every outgoing connection, and to
    listeners on port 0 such as wslocal's storage servers) come from that
    range, so one picked there could be taken between this call and the
    caller's bind; a benchmark once spoke FTP to a storage server that way."""
    low = _ephemeral_low()
    for _ in range(200):
        port = random.randrange(max(1024, low - 16384), low)
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def free_port_range(count: int) -> tuple[int, int]:
    """``count`` consecutive TCP ports on 127.0.0.1, all free a moment ago,
    as an inclusive (low, high) range (an FTP ``passive_ports``); picked
    below the ephemeral range, as ``free_port`` picks one."""
    low = _ephemeral_low()
    for _ in range(200):
        first = random.randrange(max(1024, low - 16384), low - count)
        held = []
        try:
            for port in range(first, first + count):
                s = socket.socket()
                held.append(s)
                s.bind(("127.0.0.1", port))
        except OSError:
            continue
        finally:
            for s in held:
                s.close()
        return first, first + count - 1
    raise RuntimeError(f"no {count} consecutive free ports below {low}")


def _ephemeral_low() -> int:
    """The first port of the ephemeral range (Linux; 32768 elsewhere)."""
    try:
        text = Path("/proc/sys/net/ipv4/ip_local_port_range").read_text()
        return int(text.split()[0])
    except (OSError, ValueError, IndexError):
        return 32768


def tcp_sockets(pid: int) -> list[list[str]]:
    """The kernel's TCP socket lines (``/proc/PID/net/tcp``, ``tcp6``, split
    into fields) of the sockets process ``pid`` holds a descriptor of
    (Linux ``/proc``).  Empty once ``pid`` is gone."""
    inodes = set()
    try:
        fds = os.listdir(f"/proc/{pid}/fd")
    except (FileNotFoundError, ProcessLookupError):
        return []
    for fd in fds:
        try:
            link = os.readlink(f"/proc/{pid}/fd/{fd}")
        except OSError:
            continue  # closed meanwhile
        if link.startswith("socket:["):
            inodes.add(link[len("socket:[") : -1])
    held = []
    for table in ("tcp", "tcp6"):
        try:
            lines = Path(f"/proc/{pid}/net/{table}").read_text().splitlines()[1:]
        except (FileNotFoundError, ProcessLookupError):
            continue
        held += [fields for fields in map(str.split, lines) if fields[9] in inodes]
    return held


def listening_ports(pid: int) -> set[int]:
    """TCP ports on which process ``pid`` itself holds a listening socket.

    A connect to a port only proves that *someone* listens there; a child
    that lost its port to another process would pass such a check.  This
    matches the socket inodes among ``pid``'s descriptors against the
    kernel's LISTEN sockets (``tcp_sockets``).  Empty once ``pid`` is gone.
    """
    return {
        int(fields[1].rsplit(":", 1)[1], 16)
        for fields in tcp_sockets(pid)
        if fields[3] == "0A"  # 0A: TCP_LISTEN
    }


#: Harness children (objects with ``stop()``: StorageProcess, FrontEnd,
#: LoggedChild) that were started and not stopped yet.  ``conftest.py`` stops
#: what a module leaves behind, so a fixture that failed half-way leaks no
#: process.
RUNNING: set[Any] = set()


def stop_leftovers() -> list[str]:
    """Stop every harness child still running; return their descriptions."""
    left = sorted(RUNNING, key=repr)
    for child in left:
        child.stop()
    RUNNING.difference_update(left)
    return [repr(child) for child in left]


def start_all(children: Iterable[Any], **kw: Any) -> list[Any]:
    """``start(**kw)`` each child in turn; if one fails, stop every one
    already started (and the failing one) before re-raising, so a cluster
    that cannot come up leaves no process behind."""
    started = []
    try:
        for child in children:
            started.append(child)
            child.start(**kw)
    except BaseException:
        for child in reversed(started):
            child.stop()
        raise
    return started


def wait_ports(
    proc: subprocess.Popen,
    log: Callable[[], str],
    pattern: str,
    names: Collection[str],
    timeout: float = 60.0,
) -> dict[str, int]:
    """Wait until ``log()`` names a port for each of ``names`` and ``proc``
    itself listens on every one of them; return name -> port.

    ``pattern`` has two groups, a name and its port (``re.M``).  The child
    is asked to bind port 0 and say which port it got, so no other process
    can hold it first; ``listening_ports`` then proves the socket is the
    child's own, which a connect would not.  A child that exits first, or a
    timeout, is an AssertionError with the log (the caller stops the child).
    """
    deadline = time.monotonic() + timeout
    while True:
        found = {name: int(port) for name, port in re.findall(pattern, log(), re.M)}
        if set(names) <= found.keys():
            wanted = {name: found[name] for name in names}
            if set(wanted.values()) <= listening_ports(proc.pid):
                return wanted
        if proc.poll() is not None:
            raise AssertionError(f"exited with {proc.returncode} before listening:\n{log()}")
        if time.monotonic() > deadline:
            raise AssertionError(f"did not listen on {sorted(names)} in {timeout} s:\n{log()}")
        time.sleep(0.02)  # polling the log and /proc, not a synchronisation


def stop_process(proc: subprocess.Popen, sig: int = signal.SIGTERM, timeout: float = 60.0) -> int:
    """Send ``sig`` to ``proc`` if it still runs (after SIGCONT: a frozen
    process could not act on it), SIGKILL it after ``timeout`` s, and reap
    it; return its exit status."""
    if proc.poll() is not None:
        return proc.returncode
    proc.send_signal(signal.SIGCONT)
    proc.send_signal(sig)
    try:
        return proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        return proc.wait()


def log_since(path: Path, offset: int, complete_lines: bool = True) -> str:
    """What a log file gained past byte ``offset`` (where a run began: a
    byte offset, as a text slice would start late after multi-byte
    characters), by default only its complete lines (a line still being
    written could match a prefix of the port it names)."""
    try:
        data = path.read_bytes()[offset:]
    except FileNotFoundError:
        return ""
    if complete_lines:
        data = data[: data.rfind(b"\n") + 1]
    return data.decode(errors="replace")


class LoggedChild:
    """One harness child run from a plain argv, its output appended to a log.

    For the processes a test starts itself (a front end with its own
    options, ``wslocal``): ``start`` puts it in ``RUNNING`` at once, so a
    test or fixture that fails half-way leaks nothing past its module;
    ``wait_ports`` is readiness on its own ports and stops it when it never
    gets there; ``stop`` always reaps it.
    """

    def __init__(
        self,
        name: str,
        argv: list[str],
        log_path: Path,
        *,
        env: dict[str, str] | None = None,
        cwd: Path | None = None,
        preexec_fn: Callable[[], None] | None = None,
    ) -> None:
        self.name = name
        self.argv = argv
        self.log_path = log_path
        self.env = python_env() if env is None else env
        self.cwd = cwd
        self.preexec_fn = preexec_fn
        self.proc: subprocess.Popen | None = None
        self._log_file: Any = None
        self._log_offset = 0  # where this run's part of the log begins

    def __repr__(self) -> str:
        pid = self.proc.pid if self.proc is not None else None
        return f"<LoggedChild {self.name} pid={pid}>"

    def start(self) -> LoggedChild:
        """Spawn the child (not yet ready: see ``wait_ports``); return self."""
        self._log_offset = self.log_path.stat().st_size if self.log_path.exists() else 0
        self._log_file = open(self.log_path, "ab")  # noqa: SIM115 (closed in stop)
        try:
            self.proc = subprocess.Popen(
                self.argv, env=self.env, cwd=self.cwd, stdout=self._log_file,
                stderr=subprocess.STDOUT, preexec_fn=self.preexec_fn,
            )  # fmt: skip
        except BaseException:
            self.stop()
            raise
        RUNNING.add(self)
        return self

    def log(self) -> str:
        """This run's part of the log."""
        return log_since(self.log_path, self._log_offset, complete_lines=False)

    def wait_ports(
        self, pattern: str, names: Collection[str], timeout: float = 60.0
    ) -> dict[str, int]:
        """``wait_ports`` on this child; if it fails, stop the child first."""
        assert self.proc is not None, "start() first"
        try:
            return wait_ports(self.proc, self.log, pattern, names, timeout)
        except BaseException:
            self.stop()
            raise

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 60.0) -> int | None:
        """Send ``sig`` (SIGKILL after ``timeout`` s), reap the child and
        close its log; return its exit status (None if never started).
        Idempotent."""
        RUNNING.discard(self)
        code = stop_process(self.proc, sig, timeout) if self.proc is not None else None
        if self._log_file is not None:
            self._log_file.close()
            self._log_file = None
        return code


def sigint_as_ctrl_c() -> None:
    """``preexec_fn`` for a child that the test stops with SIGINT.

    A process started from a non-interactive shell's background job (as CI
    runners and ``nohup`` do) inherits SIGINT *ignored*; Python then installs
    no KeyboardInterrupt handler and twistd no shutdown handler, so the
    child would never see the test's Ctrl-C.  Restore the default first.
    """
    signal.signal(signal.SIGINT, signal.SIG_DFL)
