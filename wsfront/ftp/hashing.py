"""HASH (draft-bryan-ftp-hash-07): a file's digest without downloading it.

``FEAT`` advertises ``HASH SHA-256*;SHA-1;MD5`` (the selected algorithm
starred), ``OPTS HASH <name>`` selects one per connection, and ``HASH path``
answers ``213 SHA-256 0-<size> <hex> path``.  Ranges (RANG) are not offered.

Only a file's committed version is hashed, never a pending upload: a
pending upload is still growing and its owner resumes it by size, so a digest
of it would describe bytes that may yet be rolled back.  SHA-256 of a version
whose sha256 the catalog already knows (one straight upload, or scrub) is
answered from the catalog (and a SHA-256 streamed here is recorded there,
``set_sha256``); anything else is computed by streaming the
version through the transfer layer's read path (``ReadStream``) into a
consumer that hashes each chunk as it arrives, so at most one read chunk is
ever held whatever the file size, and a storage server dying mid-hash fails
over like any download.
"""

from __future__ import annotations

import hashlib

from twisted.internet.interfaces import IConsumer
from twisted.logger import Logger
from zope.interface import implementer

from wsfront.catalog import errors as catalog_errors

log = Logger()

ALGORITHMS: dict[str, str] = {"SHA-256": "sha256", "SHA-1": "sha1", "MD5": "md5"}
"""FTP names of the supported algorithms -> hashlib names, in FEAT order."""

DEFAULT = "SHA-256"


class UnknownAlgorithm(ValueError):
    """OPTS HASH named an algorithm wsfs does not offer (501)."""


def select(name: str) -> str:
    """The canonical FTP name of ``name`` (case-insensitive), or UnknownAlgorithm."""
    wanted = name.strip(" ").upper()
    if wanted not in ALGORITHMS:
        raise UnknownAlgorithm(
            f"unknown algorithm {name[:40]!r}; use one of {', '.join(ALGORITHMS)}"
        )
    return wanted


def feat_line(selected: str) -> str:
    """``HASH SHA-256*;SHA-1;MD5``: every algorithm, the selected one starred."""
    return "HASH " + ";".join(f"{n}{'*' if n == selected else ''}" for n in ALGORITHMS)


def reply_text(algorithm: str, size: int, hexdigest: str, path: str) -> str:
    """The text of the 213 reply: ``SHA-256 0-<size> <hex> <path>``."""
    return f"{algorithm} 0-{size} {hexdigest} {path}"


@implementer(IConsumer)
class HashingConsumer:
    """What a ``ReadStream`` writes into for HASH: a digest, updated per chunk.

    Hashing a chunk is done before ``write`` returns, so the producer is
    never ahead by more than the chunk it is delivering; nothing is buffered.
    """

    def __init__(self, algorithm: str) -> None:
        self._hash = hashlib.new(ALGORITHMS[algorithm])
        self.producer = None
        self.length = 0

    def registerProducer(self, producer, streaming: bool) -> None:
        self.producer = producer

    def unregisterProducer(self) -> None:
        self.producer = None

    def write(self, data: bytes) -> None:
        self.length += len(data)
        self._hash.update(data)

    def hexdigest(self) -> str:
        return self._hash.hexdigest()


async def file_digest(
    transfers, user, path: str, algorithm: str, on_stream=None
) -> tuple[int, str]:
    """(size, hex digest) of the committed version of ``path``.

    ``on_stream`` is called with the ReadStream before it starts, so a
    caller can stop it (the control connection went away).  NotFound for a
    file with only a pending upload, IsADirectory for a directory.
    """
    handle = await transfers.open_read(user, path, 0)
    known = handle.version.sha256
    if algorithm == "SHA-256" and known:
        return handle.version.size, known
    consumer = HashingConsumer(algorithm)
    if on_stream is not None:
        on_stream(handle.stream)
    await handle.stream.start(consumer)
    digest = consumer.hexdigest()
    if algorithm == "SHA-256":
        await _remember(transfers.catalog, handle, digest)
    return consumer.length, digest


async def _remember(catalog, handle, digest: str) -> None:
    """Record a streamed SHA-256 in the catalog (``set_sha256``, a CAS on
    the version's ETag), so the next HASH, scrub or compaction has it free.
    A version replaced meanwhile is no error (the answer was right for the
    bytes read); a different recorded hash means the bytes read are not the
    ones committed, and is refused rather than reported as the file's."""
    try:
        await catalog.set_sha256(handle.info.inode, handle.version.etag, digest)
    except catalog_errors.VersionChanged:
        return
    except catalog_errors.HashMismatch:
        log.error(
            "HASH read {path} with sha256 {digest}, the catalog has another",
            path=handle.info.path,
            digest=digest,
        )
        raise
