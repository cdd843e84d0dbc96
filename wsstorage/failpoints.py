"""Named fault points, enabled only through the ``WSFS_FAILPOINTS`` variable.

Failure tests must stop a process at an exact moment (after exactly N bytes,
right before a fence) instead of sleeping and hoping.  Code calls
``failpoints.hit(name, count)`` at interesting places; with the variable
unset that is one dictionary lookup and nothing happens.

Spec syntax, ``;``-separated::

    WSFS_FAILPOINTS="storage.write.bytes=kill@1048576;transfer.before_commit=stop"

``action`` is one of:

* ``kill``  -- SIGKILL this process (a crash: no cleanup, no flush).
* ``stop``  -- SIGSTOP this process (a freeze; the test sends SIGCONT).
* ``raise`` -- raise :class:`FailpointError` at the call site.
* ``exit``  -- ``os._exit(77)``.

``@N`` makes the point fire only once the caller's ``count`` reaches N; byte
relays use :meth:`Failpoints.threshold` to cut their chunk exactly at N so
the process dies after precisely N bytes.  Each point fires once.  Before
acting, a line ``failpoint NAME fired count=C`` is appended to the file named
by ``WSFS_FAILPOINT_LOG`` (if set), so a test can wait for the event instead
of sleeping.
"""

from __future__ import annotations

import os
import signal
import sys

ENV_SPEC = "WSFS_FAILPOINTS"
ENV_LOG = "WSFS_FAILPOINT_LOG"
ACTIONS = frozenset({"kill", "stop", "raise", "exit"})


class FailpointError(Exception):
    """Raised by a failpoint whose action is ``raise``."""


class Failpoints:
    """A parsed failpoint spec.  Immutable apart from remembering what fired."""

    def __init__(self, spec: str | None = None, log_path: str | None = None) -> None:
        self._points: dict[str, tuple[str, int | None]] = {}
        self._fired: set[str] = set()
        self._log_path = log_path
        for item in (spec or "").split(";"):
            item = item.strip()
            if not item:
                continue
            name, sep, action = item.partition("=")
            if not sep:
                raise ValueError(f"failpoint {item!r}: expected NAME=ACTION[@N]")
            action, _, limit = action.partition("@")
            if action not in ACTIONS:
                raise ValueError(f"failpoint {name!r}: unknown action {action!r}")
            self._points[name.strip()] = (action, int(limit) if limit else None)

    @classmethod
    def from_environ(cls, environ: dict[str, str] | None = None) -> Failpoints:
        env = os.environ if environ is None else environ
        return cls(env.get(ENV_SPEC), env.get(ENV_LOG))

    @property
    def active(self) -> bool:
        return bool(self._points)

    def threshold(self, name: str) -> int | None:
        """The byte count at which ``name`` fires, if it is armed and unfired."""
        point = self._points.get(name)
        if point is None or name in self._fired:
            return None
        return point[1] if point[1] is not None else 0

    def hit(self, name: str, count: int | None = None) -> None:
        """Fire ``name`` if it is armed and ``count`` has reached its limit."""
        point = self._points.get(name)
        if point is None or name in self._fired:
            return
        action, limit = point
        if limit is not None and (count is None or count < limit):
            return
        self._fired.add(name)
        self._record(name, count)
        if action == "kill":
            os.kill(os.getpid(), signal.SIGKILL)
        elif action == "stop":
            os.kill(os.getpid(), signal.SIGSTOP)
        elif action == "exit":
            os._exit(77)
        else:
            raise FailpointError(name)

    def _record(self, name: str, count: int | None) -> None:
        line = f"failpoint {name} fired count={count} pid={os.getpid()}\n"
        sys.stderr.write(line)
        sys.stderr.flush()
        if self._log_path:
            fd = os.open(self._log_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
            try:
                os.write(fd, line.encode())
                os.fsync(fd)
            finally:
                os.close(fd)


_global: Failpoints | None = None


def failpoints() -> Failpoints:
    """The process-wide failpoints, read once from the environment."""
    global _global
    if _global is None:
        _global = Failpoints.from_environ()
    return _global


def hit(name: str, count: int | None = None) -> None:
    """Shorthand for ``failpoints().hit(name, count)``."""
    fp = failpoints()
    if fp.active:
        fp.hit(name, count)


def threshold(name: str) -> int | None:
    """Shorthand for ``failpoints().threshold(name)``."""
    fp = failpoints()
    return fp.threshold(name) if fp.active else None
