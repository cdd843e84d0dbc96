"""Interfaces of the storage tier.

``IStorageClient`` is what the front end's transfer layer talks to: the real
wire-protocol client (``wsstorage.client``) and the in-memory fake
(``wsstorage.testing``) both provide it and pass one contract suite.
``IBlobStore`` is the storage server's local disk, used only by the server.

All ``IStorageClient`` methods return Deferreds and fail with the errors of
``wsstorage.errors``; a lost or refused connection is ``NodeUnavailable``.
"""

from __future__ import annotations

from twisted.internet.interfaces import IConsumer
from zope.interface import Attribute, Interface


class IBlobWriter(IConsumer):
    """A streaming write into one blob on one storage server.

    The caller registers a streaming producer and calls ``write(data)``; the
    writer pauses that producer while the server cannot keep up, so memory
    stays bounded whatever the blob size.  ``offset`` counts every byte
    accepted, starting at the offset the write was opened at.
    """

    blob_id = Attribute("str")
    epoch = Attribute("int: the epoch this write was opened with")
    offset = Attribute("int: absolute offset after the last byte accepted by write()")

    def flush():
        """Make every byte written so far durable (fsync on the server).

        Fires with the durable length of the blob.  Fails with StaleEpoch if
        the blob was fenced with a newer epoch, or with the stream's error.
        """

    def commit():
        """Flush, then seal the blob (data, metadata record, directory fsync'd
        in that order).  Fires with the sealed BlobInfo."""

    def abort():
        """Stop writing; the blob stays unsealed at its durable length.  Fires
        when the server has released the stream."""

    def when_failed():
        """A Deferred that errbacks with the error that broke this stream
        (StaleEpoch, NodeUnavailable, DiskFull, ...), as soon as it happens,
        and never fires while the stream is healthy.  Each call gives a new
        Deferred."""


class IStorageClient(Interface):
    """The operations of one storage server, seen from a front end."""

    name = Attribute("str: the storage server's name")

    def stat(blob_id):
        """Fire with the blob's BlobInfo; BlobNotFound if absent."""

    def read(blob_id, offset, length, consumer):
        """Stream ``length`` bytes (``None``: to the end) from ``offset`` into
        ``consumer``, registering a streaming producer on it so a slow consumer
        slows the server.  Every block is checked against its checksum; a bad
        one fails with ChecksumError after the good bytes before it were
        delivered.  Fires with the number of bytes delivered; the
        producer is unregistered from ``consumer`` before the Deferred fires,
        whatever the outcome.  Cancelling the Deferred stops the stream."""

    def write(blob_id, epoch, offset, meta):
        """Open a streaming write at ``offset`` (0 creates the blob; a smaller
        offset than the blob's size truncates it first) and fire with an
        IBlobWriter.  Fails with StaleEpoch if the blob's epoch is newer,
        BlobSealed if it is sealed, InvalidOffset beyond its end.  ``meta`` is
        a JSON-able dict stored beside the blob."""

    def put(blob_id, epoch, meta, data):
        """Create the blob with ``data`` (at most 256 KiB) and seal it, as
        ``write`` at 0, the bytes and ``commit`` would, in one request; fire
        with the sealed BlobInfo once it is durable.  Fails as ``write``
        and ``commit`` do (StaleEpoch, BlobSealed, DiskFull), BadRequest for
        more than 256 KiB."""

    def fence(blob_id, epoch, truncate_to):
        """Raise the blob's epoch to ``epoch`` (durably) and truncate it to
        ``truncate_to``; writes and commits with an older epoch are refused
        from then on.  Fires with the new BlobInfo.  Fails with StaleEpoch if
        the blob already has a newer epoch, InvalidOffset if ``truncate_to``
        exceeds its durable size."""

    def commit(blob_id, epoch):
        """Seal an unsealed blob at its current size, without a stream (used
        after a takeover).  Fires with the sealed BlobInfo."""

    def delete(blob_id):
        """Remove the blob (sealed or not).  Fires with None; BlobNotFound if
        absent."""

    def list_blobs():
        """Fire with a list of BlobInfo for every blob on the server."""

    def copy_from(blob_id, source_endpoint):
        """Have this server fetch the sealed blob ``blob_id`` directly from the
        storage server at ``source_endpoint`` (a Twisted client endpoint
        string) and store it sealed with the same epoch and meta.  The bytes
        never pass through the caller.  Fires with the new BlobInfo."""

    def health():
        """Fire with a Health record."""

    # Optional: ``bind_cluster(cluster_id)`` -> Deferred of the id, or None
    # if the server cannot be bound (older); WrongCluster if its store is
    # bound to another cluster.  ``can_bind()`` -> Deferred of whether the
    # server lists ``bind``.  A ``cluster_id`` attribute, set by the front
    # end's pool, is named in the client's deletes (``wsstorage.binding``).
    # A client without them is used unbound.

    def close():
        """Close every connection to the server; fires when they are closed."""


class IBlobStore(Interface):
    """The blobs on one storage server's local disk (used by the server).

    Methods are synchronous and may block on the disk; the server runs the
    slow ones (fsync, sealing, recovery) in a thread.
    """

    def stat(blob_id):
        """Return BlobInfo; raise BlobNotFound."""

    def open_write(blob_id, epoch, offset, meta):
        """Return a handle with ``write(data)``, ``size``, ``sync() -> int``,
        ``seal() -> BlobInfo`` and ``close()``; raise as IStorageClient.write."""

    def open_read(blob_id, offset, length):
        """Return a handle with ``read(n) -> bytes`` (b"" at the end) that
        verifies block checksums (ChecksumError) and ``close()``."""

    def fence(blob_id, epoch, truncate_to):
        """As IStorageClient.fence; durable before it returns."""

    def commit(blob_id, epoch):
        """Seal at the current size; return BlobInfo."""

    def delete(blob_id):
        """Remove the blob; raise BlobNotFound."""

    def list_blobs():
        """Return an iterable of BlobInfo."""

    def count_blobs():
        """How many blobs list_blobs would return, without reading them:
        health reports it on every probe."""

    def free_space():
        """Return (free_bytes, total_bytes)."""

    # Optional: ``disk_problem()`` -> str | None, why the store cannot take
    # writes now (blocking); a store without it is taken to be writable.
    # Optional: ``identity``, a ``diskformat.StoreIdentity``: which data
    # directory this is (health reports it; a store without one, none);
    # and ``identify()`` -> that identity or None (blocking), which health
    # calls instead if present (``BlobStore``: a missing IDENTITY is written
    # there once there is room).


class IScrubbedStore(IBlobStore):
    """A blob store on disk that scrub verifies (``wsstorage.scrub``): what
    scrub needs of it beyond ``IBlobStore``.

    Scrub reads each sealed blob and the records the store found damaged;
    from ``judging`` a blob until ``judged`` a delete of its files voids
    the judgement (what is there after is another blob's), so that scrub
    neither moves nor reports a good copy written in its place.
    """

    root = Attribute("str: the store's directory (its blobs in root/blobs)")
    closed = Attribute("bool: the store was closed (its errors say so, not damage)")
    damaged = Attribute("list of str: the blobs whose record does not decode")

    def judging(blob_id):
        """Scrub begins judging ``blob_id`` (reading it, or its record)."""

    def judgement_holds(blob_id):
        """Whether the files scrub is judging were not deleted since
        ``judging``."""

    def judged(blob_id):
        """Scrub is done with ``blob_id``."""

    def quarantine(blob_id, move):
        """Apply ``move(path)`` to ``blob_id``'s files (record first) and
        return the paths moved; nothing if the blob is being written or
        deleted, or was deleted since ``judging``.  The caller fsyncs the
        directory."""

    def quarantined(blob_id, record_moved):
        """Scrub found ``blob_id``'s files gone (``record_moved``: its
        record among them): it leaves ``damaged``, or else the count."""
