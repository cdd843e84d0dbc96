"""The log lines of one upload: one for an upload that commits within its
first checkpoint period, a start line and an end line for a longer one.

A line costs the reactor thread 70-80 µs on a slow machine (twisted.logger
formats it and writes it, with cold caches between two uploads), and a
small FTP STOR used to write two: its start and its commit, together about
an eighth of the server's CPU per file (A/B on 2-core VM: 2.64 against
2.32 ms per 4 KiB STOR without either).  An upload that commits before its
first checkpoint needs no line that says it started: its commit line says
who stored what where.  So the start line waits (``StartLine``) until the
upload's first checkpoint or checkpoint timer tick (what is still running
after a few seconds is worth a line, and a crash before then leaves no
durable trace of the upload either: its start is not durable before its
first checkpoint), or until it ends otherwise than by a commit, which
writes the start line first.  A commit that finds it unwritten writes one
line with both (``committed``).
"""

from __future__ import annotations

import attrs
from twisted.logger import Logger

log = Logger()


@attrs.define
class StartLine:
    """What an upload's start line says, kept until it is written: at most
    once, by whichever comes first (the session's first checkpoint or
    timer tick, its end, or the opener when the session failed to open)."""

    upload_id: str
    user: str
    path: str
    offset: int
    replicas: str
    started_at: float
    written: bool = False

    def write(self, now: float) -> None:
        """The start line, with how long ago the upload started (it is
        written up to a checkpoint period late); nothing if written."""
        if self.written:
            return
        self.written = True
        log.info(
            "upload {id} starts: {user} {path} at {offset} on {replicas} ({ago:.1f}s ago)",
            id=self.upload_id,
            user=self.user,
            path=self.path,
            offset=self.offset,
            replicas=self.replicas,
            ago=max(0.0, now - self.started_at),
        )


def committed(
    upload_id: str, size: int, epoch: int, replicas: str, start: StartLine | None
) -> None:
    """The commit line; with the start line's fields when ``start`` was
    never written (one line for the whole upload)."""
    if start is None or start.written:
        log.info(
            "upload {id} committed: {size} bytes at epoch {epoch} on {replicas}",
            id=upload_id,
            size=size,
            epoch=epoch,
            replicas=replicas,
        )
        return
    start.written = True
    log.info(
        "upload {id} committed: {user} {path}, {size} bytes from {offset}"
        " at epoch {epoch} on {replicas}",
        id=upload_id,
        user=start.user,
        path=start.path,
        offset=start.offset,
        size=size,
        epoch=epoch,
        replicas=replicas,
    )
