"""Log observers for ``twistd --logger``.

``twistd --logger wsfront.logs.json_observer -n wsfront ...`` writes one JSON
object per line to standard output (journald and log shippers take that as
is); the default text log stays as Twisted writes it.  Every upload's start,
failover, takeover, fence and end is one event with its fields (upload id,
user, path, offset, epoch, replicas), so the JSON form can be filtered by
them; an upload that commits within its first checkpoint period has one
event for its start and its commit (``wsfront.transfer.upload_log``).
"""

from __future__ import annotations

import sys

from twisted.logger import ILogObserver, jsonFileLogObserver


def json_observer() -> ILogObserver:
    """Events as JSON lines on stdout (the ``--logger`` factory)."""
    return jsonFileLogObserver(sys.stdout, recordSeparator="")
