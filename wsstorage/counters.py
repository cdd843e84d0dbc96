"""Bytes moved by the storage servers of this process.

One pair of counters per process, not per server: the byte-counting
failpoints (``storage.read.bytes``, ``storage.write.bytes``) cut a stream
at an exact byte of everything this process moved, and
``wsstorage_process_bytes`` exports them.  Both the wire server
(``wsstorage.server``) and the in-process reads and puts
(``wsstorage.inprocess``) count here, always in the reactor thread (a ``+=`` from a thread would
race with the reactor's own).
"""

from __future__ import annotations


class ProcessCounters:
    """Blob bytes read and written by every server in this process."""

    written = 0
    read = 0
