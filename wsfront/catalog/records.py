"""Plain frozen records the catalog hands out.

Times are seconds since the epoch (floats) from the catalog's injectable
clock.  Records are snapshots: they never change under the caller, and a
later call returns a new one.
"""

from __future__ import annotations

from typing import Any

import attrs

# Entry kinds.
FILE = "file"
DIR = "dir"

# Replica states of a blob on one storage server.
REPLICA_OK = "ok"

#: The registry state ``wsfs drain`` gives a storage server (``wsfs undrain``
#: takes it away): it serves reads, takes no new blob, is no copy target.
NODE_DRAINING = "draining"
REPLICA_LOST = "lost"
REPLICA_STALE = "stale"
REPLICA_STATES = frozenset({REPLICA_OK, REPLICA_LOST, REPLICA_STALE})


class NothingCommitted:
    """The type of ``NOTHING_COMMITTED``."""

    def __repr__(self) -> str:
        return "NOTHING_COMMITTED"


#: The ``expected_etag`` of a ``delete`` or ``rename`` whose caller judged
#: its preconditions on a file with no committed version (only a pending
#: upload): VersionChanged if one was committed since, as for an etag.
NOTHING_COMMITTED = NothingCommitted()


# Upload session states.
ACTIVE = "active"
INTERRUPTED = "interrupted"
COMMITTED = "committed"
ABORTED = "aborted"
EXPIRED = "expired"
LIVE_STATES = frozenset({ACTIVE, INTERRUPTED})
#: An upload in one of these has ended for good: its row only answers
#: questions about it (tus HEAD of a completed upload) until it is purged.
FINISHED_STATES = frozenset({COMMITTED, ABORTED, EXPIRED})
UPLOAD_STATES = frozenset({ACTIVE, INTERRUPTED, COMMITTED, ABORTED, EXPIRED})

# User permissions.
PERMISSIONS = frozenset({"read", "write", "delete", "rename", "mkdir"})

# Job states.
JOB_QUEUED = "queued"
JOB_RUNNING = "running"
JOB_DONE = "done"
JOB_FAILED = "failed"


@attrs.frozen
class Replica:
    """One storage server's copy of a blob and what the catalog knows of it."""

    node: str
    state: str = REPLICA_OK


@attrs.frozen
class Extent:
    """``length`` bytes of the file at ``file_offset``, read from ``blob_id``
    at ``blob_offset``.  ``replicas`` is the blob's current replica set, so a
    reader can pick one (ok replicas first) without another query."""

    blob_id: str
    blob_offset: int
    length: int
    file_offset: int
    replicas: tuple[Replica, ...] = ()


@attrs.frozen
class Version:
    """The committed content of a file: what everyone reads.

    ``etag`` is derived from the extent list (strong: the same extents mean the
    same bytes); ``sha256`` is the whole-file hash when it was cheap to know.
    """

    version_id: int
    inode: int
    size: int
    mtime: float
    etag: str
    sha256: str | None
    extents: tuple[Extent, ...]


@attrs.frozen
class UploadSession:
    """A write session as the catalog records it (DESIGN.md, Sessions).

    The file being built is ``base_extents`` (everything below ``blob_start``:
    the kept committed prefix and earlier segments) followed by the current
    blob ``blob_id`` from file offset ``blob_start``.  ``checkpoint`` is the
    durable file offset (never above what every live replica fsync'd).
    ``path`` is the file's path now (sessions follow the inode through
    renames), or the path it was begun at if the inode is gone.
    """

    upload_id: str
    inode: int
    path: str
    user: str
    base_extents: tuple[Extent, ...]
    blob_id: str
    blob_start: int
    replicas: tuple[Replica, ...]
    wanted_replicas: int
    checkpoint: int
    owner: str
    epoch: int
    state: str
    declared_length: int | None
    meta: dict[str, Any]
    created_at: float
    updated_at: float
    expires_at: float

    @property
    def live(self) -> bool:
        """Active or interrupted (expiry by time is the catalog's business)."""
        return self.state in LIVE_STATES


def pending_charge(checkpoint: int, committed_size: int) -> int:
    """What a live upload is charged toward its user's byte quota while it
    is pending: the bytes of its file (its checkpoint) past the committed
    version it will replace, which the commit charges (an overwrite's
    bytes up to the size it replaces are that version's, charged already;
    a resume at n keeps the committed bytes below n).  The committed
    version cannot change while the upload is live (one live upload per
    file, whose commit is the only way to replace it; a delete or rename
    ends or refuses the upload first), so the charge recorded at each
    checkpoint is the one given back when the upload ends."""
    return max(0, checkpoint - committed_size)


@attrs.frozen
class UploadStart:
    """What ``start_upload`` began: the new session, and the committed size
    of the file it will replace (0 for a new file)."""

    upload: UploadSession
    committed_size: int


@attrs.frozen
class PurgedUploads:
    """What one ``purge_uploads`` did: how many rows it deleted, and the
    latest ``updated_at`` among those it took (None when it found none),
    which the next call takes as its cursor (``after``)."""

    count: int
    last_updated_at: float | None


@attrs.frozen
class Entry:
    """A name in the namespace, as ``stat`` and ``list_dir`` see it.

    ``pending`` is true for a file that has only a pending upload and no
    committed version: it exists for its upload's owner only.  ``stat`` fills
    ``version`` (with extents) and ``upload`` (the live one, if any);
    ``list_dir`` leaves both ``None`` to stay cheap on large directories and
    gives ``size``, ``mtime`` and ``etag`` of the committed version.
    """

    path: str
    name: str
    kind: str
    inode: int
    size: int
    mtime: float
    etag: str | None = None
    pending: bool = False
    version: Version | None = None
    upload: UploadSession | None = None

    @property
    def is_dir(self) -> bool:
        return self.kind == DIR


@attrs.frozen
class BlobRecord:
    """A blob and its replicas; ``length`` is known once sealed (or the
    durable length of a current blob)."""

    blob_id: str
    length: int
    sealed: bool
    wanted_replicas: int
    replicas: tuple[Replica, ...]

    @property
    def ok_replicas(self) -> tuple[str, ...]:
        return tuple(r.node for r in self.replicas if r.state == REPLICA_OK)


@attrs.frozen
class User:
    """An account; ``quota_*`` of ``None`` means unlimited."""

    name: str
    admin: bool
    root: str
    permissions: frozenset[str]
    quota_bytes: int | None
    quota_files: int | None
    used_bytes: int
    used_files: int
    created_at: float
    #: What the user's pending uploads hold past the files they replace
    #: (``records.pending_charge``), charged toward ``quota_bytes`` beside
    #: ``used_bytes`` until they commit, are discarded or expire.
    pending_bytes: int = 0

    def file_room(self, replaced: int = 0, own_pending: int = 0) -> int | None:
        """How large one file of this user may grow (None: no byte quota):
        the quota less what their committed files and their other pending
        uploads hold, plus the committed size the file replaces.
        ``own_pending``: what the file's own pending upload, being resumed,
        is charged already (``records.pending_charge``), not counted twice
        (at most ``pending_bytes``: this User may predate that upload).
        A front end's early refusal, on a User read at the login; the
        catalog checks again at each checkpoint and at the commit."""
        if self.quota_bytes is None:
            return None
        others = self.pending_bytes - min(max(own_pending, 0), self.pending_bytes)
        return self.quota_bytes - self.used_bytes - others + replaced


@attrs.frozen
class Login:
    """A user and the stored password hash of their account, read together.

    A login cache keeps (a digest of) the hash a password was verified
    against; while the stored hash is still that one, the password is still
    right, and renewing the login needs this one read instead of a scrypt
    check.  The hash stays out of ``repr`` so it cannot reach a log line.
    """

    user: User
    password_hash: str = attrs.field(repr=False)


@attrs.frozen
class Node:
    """A storage server in the registry; ``state`` is up / down / draining /
    unwritable / foreign (its store is bound to another cluster, or is an
    unbound store this cluster's front ends refuse to bind on their own:
    used for nothing, as down) / unknown."""

    name: str
    endpoint: str
    state: str
    free_bytes: int | None
    total_bytes: int | None
    seen_at: float | None
    #: Why the last front end to probe it found it down (one line, at most
    #: ``_cluster.NODE_ERROR_MAX`` characters); None while it is up.
    last_error: str | None = None
    #: The id of the data directory (store) the server was last found on
    #: (``wsstorage.diskformat.StoreIdentity``); None until one reported it.
    store_id: str | None = None
    #: The last time the server was found on another store than before (its
    #: data directory wiped or replaced): the id it had, when (catalog
    #: clock), and how many of the replicas listed there were gone and
    #: marked lost; all None if never.
    store_replaced: str | None = None
    store_replaced_at: float | None = None
    store_lost: int | None = None


@attrs.frozen
class Job:
    """An admin job (repair, drain...) queued by the CLI, run by a front end."""

    job_id: int
    kind: str
    args: dict[str, Any]
    state: str
    owner: str | None
    #: Which claim of the job this is (bumped by every ``claim_job``; 0
    #: before the first): the run of ``owner`` that holds it names it to
    #: change the job, so an earlier run under the same name cannot.
    claim: int
    progress: dict[str, Any]
    result: dict[str, Any] | None
    error: str | None
    created_at: float
    updated_at: float


@attrs.frozen
class CompactionCandidate:
    """A committed file whose version is built from ``extents`` extents and
    that has no live upload: background compaction may merge it into one
    blob.  ``etag`` is what ``replace_extents`` must still find."""

    inode: int
    path: str
    owner: str | None
    size: int
    etag: str
    sha256: str | None
    extents: int


@attrs.frozen
class LeaseRow:
    """A named lease as the catalog holds it, expired or not.  ``token``
    tells one life of the owner from another (a front end's random token
    per process), ``holder`` says who that life is (host, pid, start) and
    ``ttl_seconds`` the life it was granted: it is renewed every third of
    it.  The last three are None in a row older code wrote."""

    name: str
    owner: str
    expires_at: float
    token: str | None = None
    holder: str | None = None
    ttl_seconds: float | None = None
