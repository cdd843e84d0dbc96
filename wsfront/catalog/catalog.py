"""``SqlCatalog``: ICatalog over a ``Runner`` (SQLite or PostgreSQL).

Each method validates its arguments, then runs one transaction of the
operation modules (``_namespace``, ``_uploads``, ``_blobs``, ``_accounts``,
``_cluster``) in the catalog's thread pool and fires with its result.  The
clock is injectable so expiry and lease tests need no sleeping.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Collection, Iterable
from typing import Any

from twisted.internet.defer import Deferred, succeed
from twisted.logger import Logger
from zope.interface import implementer

from wsfront.catalog import _accounts, _blobs, _cluster, _compaction, _namespace, _uploads
from wsfront.catalog._db import Runner
from wsfront.catalog._interfaces import ICatalog
from wsfront.catalog.errors import Exists, PendingUploadExists
from wsfront.catalog.passwords import hash_password
from wsfront.catalog.records import LeaseRow, NothingCommitted

log = Logger()


@implementer(ICatalog)
class SqlCatalog:
    """The catalog on one database; ``runner.backend`` says which kind."""

    def __init__(self, runner: Runner, clock: Callable[[], float] = time.time) -> None:
        self._runner = runner
        self._clock = clock
        #: Called at close (``when_closed``), by registration number.
        self._on_close: dict[int, Callable[[], object]] = {}
        self._registered = 0

    @property
    def backend_name(self) -> str:
        return self._runner.backend.name

    def _write(self, fn: Callable[..., Any], *args: Any) -> Deferred:
        return self._runner.run(lambda tx: fn(tx, *args), write=True).addErrback(self._translate)

    def _translate(self, failure: Any) -> Any:
        """Unique constraints are the last line of defence against races;
        report them as the catalog error they stand for."""
        if self._runner.backend.is_unique_violation(failure.value):
            message = str(failure.value)
            if "uploads" in message and "inode" in message:
                raise PendingUploadExists("an upload is pending on this path")
            raise Exists(message)
        return failure

    def _hash(self, password: str) -> Deferred:
        """Hash in the pool (scrypt must not hold the reactor); the write
        that stores the hash then goes to the writer like any other, so
        SQLite's single writer thread is the only one that writes."""
        return self._runner.call(hash_password, password)

    def _read(self, fn: Callable[..., Any], *args: Any) -> Deferred:
        return self._runner.run(lambda tx: fn(tx, *args), write=False)

    def _scan(self, fn: Callable[..., Any], *args: Any) -> Deferred:
        """A read of maintenance or an admin command that may scan whole
        tables (GC's anti-join, compaction candidates, ``wsfs status``):
        on a catalog of tens of millions of rows it can outlast the
        statement time limit a request gets (PostgreSQL's
        ``statement_timeout``, 60 s unless set), which is lifted for its
        transaction only.  A read takes no row locks, so nobody waits on
        it, and these run a few at a time at most (the maintenance
        holder's passes, the metrics' sample of the under-replicated
        count, an admin's command), never once per client request."""

        def scan(tx: Any) -> Any:
            tx.lift_statement_timeout()
            return fn(tx, *args)

        return self._runner.run(scan, write=False)

    def _now(self) -> float:
        return float(self._clock())

    # -- namespace -----------------------------------------------------------

    def stat(self, path: str) -> Deferred:
        # The lookup of every RETR, SIZE and CWD: at once where the backend
        # allows it (Runner.read_now), sparing a thread hop per command.
        return self._runner.read_now(lambda tx: _namespace.stat(tx, path))

    def list_dir(
        self, path: str, after: str | None = None, limit: int = 1000, include_pending: bool = False
    ) -> Deferred:
        return self._read(_namespace.list_dir, path, after, limit, include_pending)

    def mkdir(self, path: str) -> Deferred:
        return self._write(_namespace.mkdir, path, self._now())

    def rmdir(self, path: str) -> Deferred:
        return self._write(_namespace.rmdir, path, self._now())

    def delete(
        self,
        path: str,
        abort_pending: bool = False,
        *,
        user: str | None = None,
        spare: Collection[str] = (),
        expected_etag: str | NothingCommitted | None = None,
    ) -> Deferred:
        return self._write(
            _namespace.delete,
            path,
            abort_pending,
            self._now(),
            user,
            frozenset(spare),
            expected_etag,
        )

    def rename(
        self,
        src: str,
        dst: str,
        replace: bool = False,
        *,
        user: str | None = None,
        spare: Collection[str] = (),
        expected_etag: str | NothingCommitted | None = None,
    ) -> Deferred:
        return self._write(
            _namespace.rename,
            src,
            dst,
            replace,
            self._now(),
            user,
            frozenset(spare),
            expected_etag,
        )

    # -- upload sessions -----------------------------------------------------

    def begin_upload(
        self,
        user: str,
        path: str,
        *,
        base_length: int,
        blob_id: str,
        replicas: Iterable[str],
        wanted_replicas: int,
        owner: str,
        expires_at: float,
        declared_length: int | None = None,
        meta: dict[str, Any] | None = None,
        check_version: bool = False,
        expected_version_id: int | None = None,
    ) -> Deferred:
        return self._write(
            _uploads.begin_upload,
            self._now(),
            user,
            path,
            base_length,
            blob_id,
            list(replicas),
            wanted_replicas,
            owner,
            expires_at,
            declared_length,
            dict(meta or {}),
            check_version,
            expected_version_id,
        )

    def start_upload(
        self,
        user: str,
        path: str,
        *,
        offset: int | None,
        blob_id: str,
        replicas: Iterable[str],
        wanted_replicas: int,
        owner: str,
        expires_at: float,
        declared_length: int | None = None,
        meta: dict[str, Any] | None = None,
        durable: bool = False,
    ) -> Deferred:
        # Not durable unless asked: nothing is acknowledged for a begun
        # upload, and the checkpoint or commit that follows (synchronous)
        # makes it durable.  Lost with the machine before then, its blobs
        # are GC's orphans.  A tus creation answers 201 for the start
        # itself, so it asks for a durable commit.
        return self._runner.run(
            lambda tx: _uploads.start_upload(
                tx, self._now(), user, path, offset, blob_id, list(replicas), wanted_replicas,
                owner, expires_at, declared_length, dict(meta or {}),
            ),
            write=True,
            durable=durable,
            # A fresh upload's start writes a few rows; an APPE's or a
            # REST's copies the file's extents, one row each.
            small=offset == 0,
        ).addErrback(self._translate)  # fmt: skip

    def get_upload(self, upload_id: str) -> Deferred:
        return self._read(_uploads.get_upload, upload_id)

    def find_upload(self, path: str) -> Deferred:
        return self._read(_uploads.find_upload, path)

    def list_uploads(
        self, states: Iterable[str] | None = None, owner: str | None = None
    ) -> Deferred:
        return self._read(_uploads.list_uploads, list(states) if states else None, owner)

    def checkpoint(
        self,
        upload_id: str,
        epoch: int,
        durable_offset: int,
        replicas: Iterable[str] | None = None,
        *,
        expires_at: float | None = None,
    ) -> Deferred:
        return self._write(
            _uploads.checkpoint,
            self._now(),
            upload_id,
            epoch,
            durable_offset,
            list(replicas) if replicas is not None else None,
            expires_at,
        )

    def take_over(
        self,
        upload_id: str,
        expected_epoch: int,
        new_owner: str,
        *,
        expires_at: float | None = None,
    ) -> Deferred:
        return self._write(
            _uploads.take_over, self._now(), upload_id, expected_epoch, new_owner, expires_at
        )

    def restart_at(
        self,
        upload_id: str,
        epoch: int,
        offset: int,
        blob_id: str,
        replicas: Iterable[str],
        wanted_replicas: int,
        *,
        expires_at: float | None = None,
        declared_length: int | None = _uploads.KEEP,
    ) -> Deferred:
        return self._write(
            _uploads.restart_at,
            self._now(),
            upload_id,
            epoch,
            offset,
            blob_id,
            list(replicas),
            wanted_replicas,
            expires_at,
            declared_length,
        )

    def resume_at(
        self,
        upload_id: str,
        epoch: int,
        offset: int,
        blob_id: str,
        replicas: Iterable[str],
        wanted_replicas: int,
        *,
        expires_at: float | None = None,
        declared_length: int | None = _uploads.KEEP,
    ) -> Deferred:
        return self._write(
            _uploads.resume_at,
            self._now(),
            upload_id,
            epoch,
            offset,
            blob_id,
            list(replicas),
            wanted_replicas,
            expires_at,
            declared_length,
        )

    def commit_upload(
        self,
        upload_id: str,
        epoch: int,
        length: int,
        sha256: str | None = None,
        mtime: float | None = None,
    ) -> Deferred:
        return self._write(
            _uploads.commit_upload, self._now(), upload_id, epoch, length, sha256, mtime
        )

    def interrupt_upload(self, upload_id: str, epoch: int) -> Deferred:
        return self._write(_uploads.interrupt_upload, self._now(), upload_id, epoch)

    def active_upload_owners(self) -> Deferred:
        return self._read(_uploads.active_upload_owners)

    def interrupt_sessions_of(self, owner: str) -> Deferred:
        return self._write(_uploads.interrupt_sessions_of, self._now(), owner)

    def abort_upload(self, upload_id: str, epoch: int | None = None) -> Deferred:
        return self._write(_uploads.abort_upload, self._now(), upload_id, epoch)

    def expire_uploads(self, now: float | None = None, limit: int | None = None) -> Deferred:
        return self._write(_uploads.expire_uploads, self._now() if now is None else now, limit)

    def purge_uploads(
        self, before: float, limit: int | None = None, after: float | None = None
    ) -> Deferred:
        return self._write(_uploads.purge_uploads, before, limit, after)

    # -- blobs ---------------------------------------------------------------

    def get_blob(self, blob_id: str) -> Deferred:
        return self._read(_blobs.get_blob, blob_id)

    def add_blob(self, blob_id: str, replicas: Iterable[str], wanted_replicas: int) -> Deferred:
        return self._write(_blobs.add_blob, self._now(), blob_id, list(replicas), wanted_replicas)

    def mark_replica(self, blob_id: str, node: str, state: str) -> Deferred:
        return self._write(_blobs.mark_replica, blob_id, node, state)

    def add_replica(self, blob_id: str, node: str) -> Deferred:
        return self._write(_blobs.add_replica, blob_id, node)

    def reclaim_replica(self, blob_id: str, node: str) -> Deferred:
        return self._write(_blobs.reclaim_replica, blob_id, node)

    def under_replicated(self, limit: int = 100) -> Deferred:
        return self._scan(_blobs.under_replicated, limit)

    def count_under_replicated(self) -> Deferred:
        return self._scan(_blobs.count_under_replicated)

    def replica_health(self, with_paths: bool = True) -> Deferred:
        return self._scan(_blobs.replica_health, with_paths)

    def collectable_blobs(self, limit: int = 100) -> Deferred:
        return self._scan(_blobs.collectable_blobs, limit)

    def forget_blob(self, blob_id: str) -> Deferred:
        return self._write(_blobs.forget_blob, blob_id)

    # -- compaction and late hashes -----------------------------------------

    def replace_extents(
        self, inode: int, expected_etag: str, extents: Iterable[Any], sha256: str | None = None
    ) -> Deferred:
        return self._write(_compaction.replace_extents, inode, expected_etag, list(extents), sha256)

    def set_sha256(self, inode: int, expected_etag: str, sha256: str) -> Deferred:
        return self._write(_compaction.set_sha256, inode, expected_etag, sha256)

    def compaction_candidates(
        self, min_extents: int, limit: int = 100, after: int | None = None
    ) -> Deferred:
        return self._scan(_compaction.compaction_candidates, min_extents, limit, after)

    # -- users ---------------------------------------------------------------

    def add_user(
        self,
        name: str,
        password: str,
        *,
        admin: bool = False,
        root: str | None = None,
        permissions: Iterable[str] | None = None,
        quota_bytes: int | None = None,
        quota_files: int | None = None,
        adopt_files: bool = False,
    ) -> Deferred:
        now = self._now()
        perms = list(permissions) if permissions is not None else None

        def insert(stored: str) -> Deferred:
            return self._write(
                _accounts.add_user, now, name, stored, admin, root, perms, quota_bytes,
                quota_files, adopt_files,
            )  # fmt: skip

        return self._hash(password).addCallback(insert)

    def get_user(self, name: str) -> Deferred:
        return self._read(_accounts.get_user, name)

    def list_users(self) -> Deferred:
        return self._read(_accounts.list_users)

    def delete_user(self, name: str, files: str = _accounts.REFUSE) -> Deferred:
        # A purge's transaction leaves the root's parent unlocked; its
        # mtime is set in a transaction of its own once the purge committed.
        now = self._now()
        touched: list[int] = []

        def touch_parent(result: dict[str, Any]) -> Deferred:
            if not touched:
                return succeed(result)

            def untouched(failure: Any) -> None:
                # The purge committed: a directory's time is not worth
                # reporting the deletion as failed.
                log.warn(
                    "user {name} purged; the mtime of its root's parent stays: {err}",
                    name=name,
                    err=failure.value,
                )

            # The time of the touch, not the purge's start: the purge may
            # have run long, and the removal is seen from its commit on.
            d = self._write(_accounts.touch_dir, touched[0], self._now())
            return d.addErrback(untouched).addCallback(lambda _: result)

        d = self._write(_accounts.delete_user, now, name, files, touched)
        return d.addCallback(touch_parent)

    def set_password(self, name: str, password: str) -> Deferred:
        def update(stored: str) -> Deferred:
            return self._write(_accounts.set_password_hash, name, stored)

        return self._hash(password).addCallback(update)

    def set_quota(self, name: str, quota_bytes: int | None, quota_files: int | None) -> Deferred:
        return self._write(_accounts.set_quota, name, quota_bytes, quota_files)

    def recount_pending(self, name: str) -> Deferred:
        return self._write(_accounts.recount_pending, name)

    def set_permissions(self, name: str, permissions: Iterable[str]) -> Deferred:
        return self._write(_accounts.set_permissions, name, list(permissions))

    def authenticate(self, name: str, password: str) -> Deferred:
        return self._read(_accounts.authenticate, name, password)

    def check_login(self, name: str, password: str) -> Deferred:
        return self._read(_accounts.check_login, name, password)

    def get_login(self, name: str) -> Deferred:
        return self._read(_accounts.get_login, name)

    # -- storage nodes -------------------------------------------------------

    def register_node(self, name: str, endpoint: str) -> Deferred:
        return self._write(_cluster.register_node, name, endpoint)

    def list_nodes(self) -> Deferred:
        return self._read(_cluster.list_nodes)

    def set_node_health(
        self,
        name: str,
        state: str,
        free_bytes: int | None,
        total_bytes: int | None,
        seen_at: float | None,
        last_error: str | None = None,
        endpoint: str | None = None,
    ) -> Deferred:
        return self._write(
            _cluster.set_node_health,
            name,
            state,
            free_bytes,
            total_bytes,
            seen_at,
            last_error,
            endpoint,
        )

    def set_node_store(
        self, name: str, expected: str | None, store_id: str, lost: int | None = None
    ) -> Deferred:
        return self._write(_cluster.set_node_store, self._now(), name, expected, store_id, lost)

    def cluster_id(self) -> Deferred:
        """The catalog's cluster id (32 hex digits), made now if it has none
        (``_cluster.cluster_id``): storage servers are bound to it."""
        return self._write(_cluster.cluster_id, os.urandom(16).hex())

    def has_replicas_on(self, node: str) -> Deferred:
        """Whether any replica is recorded on ``node`` (``_cluster.has_replicas_on``)."""
        return self._read(_cluster.has_replicas_on, node)

    def adopt_cluster_id(self, value: str) -> Deferred:
        """Make ``value`` the cluster id (``fsck --rebuild-catalog``)."""
        return self._write(_cluster.adopt_cluster_id, value)

    def set_node_draining(self, name: str, draining: bool) -> Deferred:
        return self._write(_cluster.set_node_draining, name, draining)

    # -- admin jobs and leases -----------------------------------------------

    def enqueue_job(self, kind: str, args: dict[str, Any]) -> Deferred:
        return self._write(_cluster.enqueue_job, self._now(), kind, dict(args))

    def claim_job(self, owner: str, kinds: Iterable[str]) -> Deferred:
        return self._write(_cluster.claim_job, self._now(), owner, list(kinds))

    def update_job(self, job_id: int, owner: str, claim: int, progress: dict[str, Any]) -> Deferred:
        return self._write(_cluster.update_job, self._now(), job_id, owner, claim, dict(progress))

    def finish_job(
        self,
        job_id: int,
        owner: str,
        claim: int,
        result: dict[str, Any] | None = None,
        error: str | None = None,
    ) -> Deferred:
        return self._write(_cluster.finish_job, self._now(), job_id, owner, claim, result, error)

    def cancel_job(self, job_id: int, why: str) -> Deferred:
        return self._write(_cluster.cancel_job, self._now(), job_id, why)

    def requeue_job(self, job_id: int, owner: str, claim: int, note: str) -> Deferred:
        return self._write(_cluster.requeue_job, self._now(), job_id, owner, claim, note)

    def get_job(self, job_id: int) -> Deferred:
        return self._read(_cluster.get_job, job_id)

    def list_jobs(self, states: Iterable[str] | None = None) -> Deferred:
        return self._read(_cluster.list_jobs, list(states) if states else None)

    def acquire_lease(
        self,
        name: str,
        owner: str,
        ttl_seconds: float,
        token: str | None = None,
        holder: str | None = None,
        lapsed: bool = True,
    ) -> Deferred:
        return self._write(
            _cluster.acquire_lease, self._now(), name, owner, ttl_seconds, token, holder, lapsed
        )

    def take_over_lease(
        self,
        name: str,
        owner: str,
        ttl_seconds: float,
        token: str,
        holder: str | None,
        seen: LeaseRow,
    ) -> Deferred:
        return self._write(
            _cluster.take_over_lease, self._now(), name, owner, ttl_seconds, token, holder, seen
        )

    def release_lease(self, name: str, owner: str, token: str | None = None) -> Deferred:
        return self._write(_cluster.release_lease, name, owner, token)

    def get_lease(self, name: str) -> Deferred:
        return self._read(_cluster.get_lease, name)

    def get_lease_row(self, name: str) -> Deferred:
        return self._read(_cluster.get_lease_row, name)

    def list_leases(self, prefix: str = "") -> Deferred:
        return self._read(_cluster.list_leases, prefix)

    # -- whole catalog -------------------------------------------------------

    def status(self) -> Deferred:
        return self._scan(_cluster.status)

    @property
    def closed(self) -> bool:
        return self._runner.closed

    def when_closed(self, fn: Callable[[], object]) -> Callable[[], None]:
        """Call ``fn`` (no arguments) when the catalog closes, at once if it
        is closed; return a function that forgets it.

        For work scheduled to ask the catalog later (a failed upload's
        interruption tried again in a few seconds): it is cancelled at
        close rather than run into a closed catalog, where it could only
        fail (and log that it did) while the front end stops."""
        if self.closed:
            fn()
            return lambda: None
        self._registered += 1
        key = self._registered
        self._on_close[key] = fn

        def forget() -> None:
            self._on_close.pop(key, None)

        return forget

    def close(self) -> Deferred:
        self._runner.close()
        hooks, self._on_close = list(self._on_close.values()), {}
        for fn in hooks:
            try:
                fn()
            except Exception:
                log.failure("catalog: a hook run at close failed")
        return succeed(None)

    # -- file times (MFMT) ---------------------------------------------------

    def set_mtime(self, path: str, mtime: float) -> Deferred:
        return self._write(_namespace.set_mtime, path, float(mtime))
