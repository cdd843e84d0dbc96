"""The catalog's one interface, provided by the SQLite and PostgreSQL backends.

Every method returns a Deferred (the database work runs in a thread pool of
the catalog's own, never on the reactor thread) and fails with the errors of
``wsfront.catalog.errors``.  Paths are absolute ``str`` (``"/a/b"``) already
joined with the user's root by the transfer layer; they are checked against
the name policy (``names.split_path``) and refused with ``InvalidName``.

Session operations that take an ``epoch`` are compare-and-set: they change
the session only if its epoch is still ``epoch`` and fail with
``EpochConflict`` otherwise (``UploadFinished``, a subclass, once the session
is committed, aborted or expired).  Of two front ends racing, exactly one
wins.
"""

from __future__ import annotations

from zope.interface import Attribute, Interface

from wsfront.catalog._uploads import KEEP


class ICatalog(Interface):
    """Namespace, upload sessions, blobs, users, storage nodes and admin jobs."""

    # -- namespace -----------------------------------------------------------

    def stat(path):
        """Fire with the Entry at ``path`` (``version`` with extents and the
        live ``upload`` filled in); NotFound, NotADirectory on the way."""

    def list_dir(path, after=None, limit=1000, include_pending=False):
        """Fire with up to ``limit`` Entries of the directory ``path`` whose
        names sort after ``after`` (byte order of UTF-8), in that order.
        Page with ``after=last_page[-1].name``.  Files with only a pending
        upload are left out unless ``include_pending``.  NotFound,
        NotADirectory."""

    def mkdir(path):
        """Create the directory; fire with its Entry.  Exists (also for a
        pending-only file), NotFound (parent), NotADirectory."""

    def rmdir(path):
        """Remove an empty directory.  NotEmpty (pending-only files count),
        NotADirectory, NotFound; the root cannot be removed (InvalidMove),
        nor a user's root (RootBusy)."""

    def delete(path, abort_pending=False, *, user=None, spare=(), expected_etag=None):
        """Remove a file: its version's blobs become collectable and its
        owner's usage drops.  A live upload on it makes this fail with
        PendingUploadExists unless ``abort_pending``, which aborts the upload
        too, or unless it is ``user``'s own and interrupted (no client is
        sending), which is abandoned (aborted) with the file.  An upload
        whose id is in ``spare`` (held by a session of the caller's front
        end, whatever its row says) is never abandoned so.  IsADirectory,
        NotFound; VersionChanged unless the committed version still has
        ``expected_etag``, if given (``records.NOTHING_COMMITTED``: unless
        it still has none).  Fires with the id of the upload so abandoned,
        else None."""

    def rename(src, dst, replace=False, *, user=None, spare=(), expected_etag=None):
        """Move one entry (file or directory, no data).  Exists when ``dst``
        exists and not ``replace`` (a replaced file is deleted as by
        ``delete`` with ``user`` and ``spare``: their own interrupted upload
        on it is abandoned, any other pending upload refuses with
        PendingUploadExists; a directory is never replaced); InvalidMove into its own
        subtree; NotFound; NotADirectory; RootBusy for a directory that is
        a user's root or holds one; VersionChanged unless the file ``src``
        still has the committed version ``expected_etag``, if given
        (``records.NOTHING_COMMITTED``: unless it still has none).  Fires
        with the new Entry."""

    # -- upload sessions -----------------------------------------------------

    def begin_upload(
        user,
        path,
        *,
        base_length,
        blob_id,
        replicas,
        wanted_replicas,
        owner,
        expires_at,
        declared_length=None,
        meta=None,
        check_version=False,
        expected_version_id=None,
    ):
        """Start a pending upload on ``path``, creating the file inode if the
        path has none (parent must exist and be a directory).  The session
        keeps the committed extents up to ``base_length`` (InvalidOffset above
        the committed size; 0 for a new file) and its current blob
        ``blob_id`` (on the node names ``replicas``) starts there; epoch 1,
        checkpoint = base_length, state active.  IsADirectory;
        PendingUploadExists while another live upload is on the path (an
        expired one is expired first).  Of two racing, exactly one wins.
        ``check_version``: VersionChanged unless the path's committed
        version is still ``expected_version_id`` (``None``: no committed
        version, or no file), as a caller's earlier look found it.
        Fires with the UploadSession."""

    def start_upload(
        user,
        path,
        *,
        offset,
        blob_id,
        replicas,
        wanted_replicas,
        owner,
        expires_at,
        declared_length=None,
        meta=None,
        durable=False,
    ):
        """``begin_upload`` at ``offset`` (None: at the committed size) with
        the lookup it needs in the same transaction, for a STOR or APPE.
        Any live upload on the path (even expired) changes nothing and fails
        with PendingUploadExists carrying it (``.upload``), so its owner can
        take it over; InvalidOffset above the committed size.  The commit
        need not wait for the disk (nothing is acknowledged for it; the
        session's next checkpoint or commit does); ``durable=True`` when the
        start itself is acknowledged (a tus creation's 201 and URL).  Fires
        with an UploadStart (the session, the committed size it replaces)."""

    def get_upload(upload_id):
        """Fire with the UploadSession (any state); NotFound."""

    def find_upload(path):
        """Fire with the live UploadSession on ``path``, or None."""

    def list_uploads(states=None, owner=None):
        """Fire with the UploadSessions in ``states`` (default: live ones),
        optionally only those owned by front end ``owner``."""

    def checkpoint(upload_id, epoch, durable_offset, replicas=None, *, expires_at=None):
        """CAS: record ``durable_offset`` (>= the current checkpoint and <= a
        declared length, else InvalidOffset) and, if given, the current
        blob's replica set (node names; ok replicas left out are marked lost,
        stale ones stay stale)
        after a replica dropped out, and a later ``expires_at`` (activity
        keeps a session alive).  The state becomes active again if another
        front end had marked it interrupted at this epoch (its writer was
        only paused): a client is sending.  Fires with the UploadSession."""

    def take_over(upload_id, expected_epoch, new_owner, *, expires_at=None):
        """CAS: epoch + 1, owner = ``new_owner``, state active (from active or
        interrupted).  The loser of a race gets EpochConflict.  Fires with
        the new UploadSession."""

    def restart_at(
        upload_id,
        epoch,
        offset,
        blob_id,
        replicas,
        wanted_replicas,
        *,
        expires_at=None,
        declared_length=KEEP,
    ):
        """CAS: resume at file ``offset`` (<= checkpoint, else InvalidOffset).
        The current blob is kept as an extent up to ``offset`` (and sealed in
        the catalog: the caller fences/commits it on the storage servers), or
        dropped if ``offset`` is below its start, base extents trimmed to
        ``offset``; a new current blob ``blob_id`` starts at ``offset`` and
        checkpoint = ``offset``.  The epoch is unchanged.  A
        ``declared_length`` other than KEEP replaces the recorded one (at
        least ``offset``, else InvalidOffset).  Fires with the
        UploadSession."""

    def resume_at(
        upload_id,
        epoch,
        offset,
        blob_id,
        replicas,
        wanted_replicas,
        *,
        expires_at=None,
        declared_length=KEEP,
    ):
        """``restart_at``, firing with an UploadStart: the session and the
        committed size of the file it will replace (a takeover's room
        for the byte quota counts it)."""

    def commit_upload(upload_id, epoch, length, sha256=None, mtime=None):
        """CAS: the session's extents (base + current blob up to ``length``)
        become the file's committed version, replacing the old one; usage is
        updated (QuotaExceeded leaves everything as it was); the current blob
        is sealed; state committed.  InvalidOffset if ``length`` is below the
        current blob's start or differs from a declared length.  Fires with
        the Version."""

    def interrupt_upload(upload_id, epoch):
        """CAS: state interrupted (the owning front end lost its client).
        Fires with the UploadSession."""

    def active_upload_owners():
        """Fire with {front end: latest updated_at} over active uploads."""

    def interrupt_sessions_of(owner):
        """Mark every active upload owned by front end ``owner`` interrupted
        (it restarted).  Fires with the list of UploadSessions changed."""

    def abort_upload(upload_id, epoch=None):
        """End the upload (tus termination); CAS when ``epoch`` is given.
        Its blobs become collectable; a pending-only inode disappears.
        Fires with the UploadSession."""

    def expire_uploads(now=None, limit=None):
        """Expire live uploads whose expires_at <= ``now`` (default: the
        clock) as abort_upload does, state expired, at most ``limit`` of
        them (all when None), oldest id first.  Fires with them."""

    def purge_uploads(before, limit=None, after=None):
        """Delete the rows of finished uploads (committed, aborted, expired)
        whose last change (``updated_at``: when they finished) is at or
        before ``before`` (and at or after ``after`` when given: the keyset
        cursor of a purge in several calls), with any base extents they
        kept, at most ``limit`` of them (all when None), earliest finished
        first, in one transaction.  Fires with a ``PurgedUploads``: how many
        were deleted and the latest ``updated_at`` among them (None if
        none), the next call's ``after``.  A purged upload is
        NotFound to ``get_upload`` and absent from ``list_uploads``; live
        uploads are never touched."""

    # -- blobs ---------------------------------------------------------------

    def get_blob(blob_id):
        """Fire with the BlobRecord; NotFound."""

    def add_blob(blob_id, replicas, wanted_replicas):
        """Record a new, unsealed blob on the node names ``replicas`` before
        its first byte is written (compaction), so GC's storage sweep never
        takes it for an orphan.  Nothing references it yet: abandoned, it is
        collectable like an aborted upload's blob.  Fires with the
        BlobRecord; Exists if the id is taken."""

    def mark_replica(blob_id, node, state):
        """Raise one replica's distrust to ``state`` (lost or stale).

        States rank ok < lost < stale and a mark never lowers one, so racing
        marks end alike in either order, and a damage mark (stale) on a lost
        replica sticks: repair may count a lost copy ok again, never a
        stale one.  Only ``add_replica`` (a verified copy) or
        ``reclaim_replica`` (a lost copy read back intact) makes a replica
        ok again."""

    def add_replica(blob_id, node):
        """Record a new (or repaired) ok replica of a blob.  NotFound if
        the blob was forgotten meanwhile (``forget_blob``): the copy is
        nobody's, its maker deletes it.  Serialised with ``forget_blob``
        on the blob's row."""

    def reclaim_replica(blob_id, node):
        """Count a ``lost`` replica ok again, after repair read its bytes
        back equal to a verified copy's (its server came back intact), so
        no copy is made.  Only if the row is still ``lost`` and its server
        is not being drained (fires False otherwise: nothing changed);
        NotFound if the blob was forgotten.
        Serialised with ``forget_blob`` on the blob's row."""

    def under_replicated(limit=100):
        """Fire with up to ``limit`` BlobRecords of sealed, referenced blobs
        with fewer ok replicas than wanted."""

    def count_under_replicated():
        """Fire with the number of such blobs (ok replicas wherever they
        are: repair's count)."""

    def replica_health():
        """Fire with the replica counts of ``status`` (under_replicated,
        under_replicated_files, unavailable, unavailable_files,
        unavailable_paths), by replicas on servers not recorded down: the
        one query ``wsfs status``, the metrics and the status page share."""

    def collectable_blobs(limit=100):
        """Fire with up to ``limit`` BlobRecords no version and no live upload
        references: their bytes may be deleted from the storage servers."""

    def forget_blob(blob_id):
        """Remove a collectable blob's record (after its replicas were
        deleted).  A blob still referenced is refused with Exists.  Fires
        with the nodes of the replica rows it removed, read under the
        blob's row lock: one recorded (``add_replica``) after the caller
        listed the blob is among them, for the caller to delete too."""

    # -- compaction and late hashes -----------------------------------------

    def replace_extents(inode, expected_etag, extents, sha256=None):
        """CAS: give the committed version of file ``inode`` the extent list
        ``extents`` (Extents, mappings or ``(blob_id, blob_offset, length)``
        tuples;
        file offsets follow from the order) holding the same bytes, in one
        transaction.  Only if the version still has ``expected_etag``
        (VersionChanged otherwise: overwritten, appended, truncated, deleted)
        and no upload is live on the file (PendingUploadExists).  The new
        extents must cover exactly the version's size (ValueError) and their
        blobs must still be recorded (NotFound: GC forgot an abandoned one);
        an unsealed one is sealed at the length the extents use (the caller
        committed it on every replica first).  ``sha256``, when given, is
        recorded (HashMismatch if a different one is).  The version keeps
        its version_id, size, mtime and ETag (same bytes, same strong ETag:
        resumed downloads go on).  Old blobs nothing else references (no
        other version, no live upload's base) become collectable.  Fires
        with the new Version."""

    def set_sha256(inode, expected_etag, sha256):
        """CAS: record the whole-file sha256 of file ``inode``'s committed
        version computed after its commit (FTP HASH, scrub, compaction),
        if the version still has ``expected_etag`` (VersionChanged).
        HashMismatch if a different hash is already recorded; the same one
        is a no-op.  Fires with the Version."""

    def compaction_candidates(min_extents, limit=100, after=None):
        """Fire with up to ``limit`` CompactionCandidates, by inode above
        ``after``: committed files whose version has at least ``min_extents``
        extents and no live upload.  Page with ``after=last[-1].inode``."""

    # -- users ---------------------------------------------------------------

    def add_user(
        name,
        password,
        *,
        admin=False,
        root=None,
        permissions=None,
        quota_bytes=None,
        quota_files=None,
        adopt_files=False,
    ):
        """Create a user (root default ``/<name>``, created as a directory
        with its parents; permissions default all).  Exists, also when the
        root already holds entries (a deleted user's kept files) unless
        ``adopt_files``: access goes by path, so a reused name must not
        silently inherit them.  Fires with the User."""

    def get_user(name):
        """Fire with the User; NotFound."""

    def list_users():
        """Fire with every User, by name."""

    def delete_user(name, files="refuse"):
        """Remove the account.  ``files``: "refuse" fails with NotEmpty
        while its root holds entries or it has pending uploads; "purge"
        deletes the root's tree and aborts every live upload of the user,
        those a rename moved out of the root too (NotEmpty if another
        user's root is in it, or it is ``/``), the blobs then go to the
        garbage collector;
        "keep" leaves them.  NotFound.  Fires with a dict of what was done
        (``files_deleted``, ``uploads_aborted``,
        ``uploads_aborted_outside_root`` after a purge)."""

    def set_password(name, password):
        """Replace the password hash (new salt).  NotFound."""

    def set_quota(name, quota_bytes, quota_files):
        """Set both quotas (None: unlimited).  Fires with the User."""

    def recount_pending(name):
        """Count ``name``'s pending_bytes again from their live uploads
        (after a front end of the code before schema 12 ran beside a newer
        one).  Fires with (the User, the count it replaced)."""

    def set_permissions(name, permissions):
        """Set the permission set (subset of records.PERMISSIONS)."""

    def authenticate(name, password):
        """Fire with the User, or fail with AuthFailed (same scrypt work for
        unknown users and wrong passwords)."""

    def check_login(name, password):
        """``authenticate``, firing with the Login: the User and the stored
        password hash the password was verified against (one read)."""

    def get_login(name):
        """Fire with the Login (User and stored password hash) in one read,
        without a scrypt check; NotFound.  A login cache renews a login
        whose verified hash is still the stored one (see wsfront.auth)."""

    # -- storage nodes -------------------------------------------------------

    def register_node(name, endpoint):
        """Insert or update a storage server; fires with the Node."""

    def list_nodes():
        """Fire with every Node, by name."""

    def set_node_health(
        name, state, free_bytes, total_bytes, seen_at, last_error=None, endpoint=None
    ):
        """Record a health probe's outcome: ``last_error`` is why the server
        is down (None while up), kept as one capped line.  NotFound.  With
        ``endpoint`` (where the probe went), fires with None and records
        nothing if the registry names another endpoint for it now."""

    def set_node_store(name, expected, store_id, lost=None):
        """Compare-and-set the store (data directory) id the server runs
        on, from ``expected`` (None: its first) to ``store_id``; a
        replacement also records the old id, when, and ``lost`` (replicas
        found gone there).  Fires with whether it was set."""

    def cluster_id():
        """Fire with the catalog's cluster id (32 hex digits), made now,
        race-free, if it has none: the storage servers it uses are bound
        to it (``wsstorage.binding``)."""

    def has_replicas_on(node):
        """Fire with whether any replica (in any state) is recorded on
        ``node``: an unbound store holding blobs is bound automatically
        only if so (``wsfront.transfer.binding``)."""

    def adopt_cluster_id(value):
        """Make ``value`` the catalog's cluster id (a rebuilt catalog takes
        its stores')."""

    def set_node_draining(name, draining):
        """Start or end a drain: the state becomes ``draining``, or from
        ``draining`` ``unknown`` (``set_node_health`` never changes it
        either way).  Fires with the Node; NotFound."""

    # -- admin jobs and leases -----------------------------------------------

    def enqueue_job(kind, args):
        """Queue a job; fires with the Job."""

    def claim_job(owner, kinds):
        """Take the oldest queued job of one of ``kinds`` (state running,
        owner set, ``claim`` bumped: the run's own number, which no earlier
        run of the job holds, even one under the same owner name); of
        racing claimers exactly one gets it.  Fires with the Job or None."""

    def update_job(job_id, owner, claim, progress):
        """Record progress of a running job under ``owner``'s claim
        ``claim`` (LeaseHeld otherwise).  Fires with the Job."""

    def finish_job(job_id, owner, claim, result=None, error=None):
        """End the job: done, or failed when ``error`` is given.  LeaseHeld
        if it is not running under ``owner``'s claim ``claim`` (any more:
        re-queued, taken by another front end or claimed again by a
        restarted one of the same name, ended), decided by the change
        itself, so a runner whose job moved on meanwhile is never told it
        finished it."""

    def cancel_job(job_id, why):
        """Fail a still queued job with ``why``; fires False if it is not
        queued (a runner has it, or it ended)."""

    def requeue_job(job_id, owner, claim, note):
        """Put a running job of ``owner`` back in the queue (same id, owner
        cleared, ``note`` in error until it finishes); LeaseHeld if it is
        not running under ``owner``'s claim ``claim``.  Fires with the Job."""

    def get_job(job_id):
        """Fire with the Job; NotFound."""

    def list_jobs(states=None):
        """Fire with the Jobs in ``states`` (default all), oldest first."""

    def acquire_lease(name, owner, ttl_seconds, token=None, holder=None, lapsed=True):
        """Take or renew the named lease; fires True if ``owner`` holds it
        until now + ttl, False if another owner, or another life of this
        one (another ``token``), holds an unexpired one.  ``holder`` says
        who the life is (host, pid, start), for whoever is refused.
        Without ``lapsed``, another holder's expired lease (by this host's
        clock) is not taken either: only a free one, or this life's own."""

    def take_over_lease(name, owner, ttl_seconds, token, holder, seen):
        """Take the lease whose row was ``seen`` (a ``LeaseRow``) if it is
        unchanged since (not renewed, not taken); fires True if taken."""

    def release_lease(name, owner, token=None):
        """Give the lease up if ``owner`` holds it under ``token``."""

    def get_lease_row(name):
        """Fire with the named lease's ``LeaseRow``, expired or not, or None."""

    def get_lease(name):
        """Fire with the named lease's (owner, expires_at), expired or not,
        or None if nobody holds it: a read that changes nothing (the CLI
        asks it whether a front end runs maintenance)."""

    def list_leases(prefix=""):
        """Fire with {name: (owner, expires_at)} of the leases whose name
        starts with ``prefix``, expired or not."""

    # -- whole catalog -------------------------------------------------------

    def status():
        """Fire with a dict: files, bytes, dirs, live_uploads,
        under_replicated (blobs with fewer replicas on servers not down than
        wanted), under_replicated_files, unavailable (blobs with none),
        unavailable_files, unavailable_paths (the first few), nodes (list
        of Node), cluster_id (None until ``cluster_id()`` made one)."""

    def close():
        """Stop the thread pool and close the connections; fires when done.
        Every call after it fails with ``CatalogClosed``."""

    closed = Attribute("Whether close() was called.")

    def when_closed(fn):
        """Call ``fn()`` at close (at once if closed already); return a
        function that forgets it.  For work that would otherwise ask a
        closed catalog later (a retry on a timer)."""

    # -- file times ----------------------------------------------------------

    def set_mtime(path, mtime):
        """Set the modification time (POSIX seconds) of a file's committed
        version or of a directory; fire with the new Entry.  Content, ETag
        and any pending upload are untouched.  NotFound (also for a file with
        only a pending upload)."""
