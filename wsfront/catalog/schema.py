"""Numbered schema migrations, the same for both backends.

``MIGRATIONS[n - 1]`` takes a database from version ``n - 1`` to ``n``;
the version lives in the one-row table ``schema_version``.  A database newer
than the code is refused (SchemaTooNew) rather than guessed at.  Each
migration is a list of statements with ``{placeholders}`` the backend fills
in (``{pk}``, ``{int}``, ``{real}``, ``{name}``) where the dialects differ;
a statement wrapped in ``Only`` runs on one backend alone (how SQLite stores
a table, say), the version still counts on both; one with a ``note`` says
in the log how many rows it changed, when it changed any.
"""

from __future__ import annotations

from dataclasses import dataclass

from twisted.logger import Logger

from wsfront.catalog.errors import SchemaTooNew

log = Logger()

LIVE_SQL = "('active', 'interrupted')"
#: The states an upload ends in (``records.FINISHED_STATES``), spelled as
#: the predicate of the index of finished uploads (schema 7): a query uses
#: that index only if it says ``state IN FINISHED_SQL`` itself.
FINISHED_SQL = "('aborted', 'committed', 'expired')"

#: What a user's live uploads are charged (``records.pending_charge``, summed):
#: each the bytes of its file past the committed size it will replace, as
#: its commit would charge them; for the user named by the SQL ``{user}``.
PENDING_OF_USER_SQL = (
    "(SELECT COALESCE(SUM(CASE WHEN u.checkpoint > COALESCE(v.size, 0) "
    "THEN u.checkpoint - COALESCE(v.size, 0) ELSE 0 END), 0) "
    "FROM uploads u JOIN inodes i ON i.inode = u.inode "
    "LEFT JOIN versions v ON v.version_id = i.version_id "
    f"WHERE u.username = {{user}} AND u.state IN {LIVE_SQL})"
)


@dataclass(frozen=True)
class Only:
    """A migration statement for one backend only (``Backend.name``): a
    change of how one database stores a table, not of what it holds."""

    backend: str
    sql: str
    #: Logged (a warning) with ``{count}``, the rows the statement changed,
    #: if it changed any: for a statement that repairs what the code
    #: never writes but an older database may hold.
    note: str | None = None


def _sqlite_keyed(table: str, columns: dict[str, str], key: str, *indexes: str) -> list[Only]:
    """SQLite: ``table`` rebuilt as a WITHOUT ROWID table, whose rows live
    in the b-tree of their primary key, and its other ``indexes`` again.
    The copy needs every column that ``columns`` says NOT NULL to hold a
    value in every row (``_NULL_BLOB_IDS`` for the one an older schema did
    not say so of).

    A table with a primary key other than an integer keeps its rows in one
    b-tree by rowid and the key in an index beside it: each insert writes a
    page of both (the row appended, the key somewhere in the index).
    Stored in the key's b-tree, a row is one page to write and one b-tree
    to descend to look it up.  Suited to small rows (SQLite's advice: under
    a twentieth of a page), as these tables' are."""
    names = ", ".join(columns)
    kept = f"{table}_keyed"
    return [
        Only("sqlite", sql)
        for sql in (
            f"CREATE TABLE {kept} ("
            + ", ".join(f"{name} {kind}" for name, kind in columns.items())
            + f", PRIMARY KEY ({key})) WITHOUT ROWID",
            f"INSERT INTO {kept} ({names}) SELECT {names} FROM {table}",
            f"DROP TABLE {table}",
            f"ALTER TABLE {kept} RENAME TO {table}",
            *indexes,
        )
    ]


_EXTENT_COLUMNS = {
    "idx": "INTEGER NOT NULL",
    "blob_id": "TEXT NOT NULL",
    "blob_offset": "INTEGER NOT NULL",
    "length": "INTEGER NOT NULL",
    "file_offset": "INTEGER NOT NULL",
}

#: Migration 6 (SQLite): a row of ``blobs`` without a blob_id, which the
#: old table allowed (SQLite lets a TEXT PRIMARY KEY be NULL) but the
#: WITHOUT ROWID table refuses, is deleted rather than stopping the
#: upgrade with a bare IntegrityError: wsfs never writes one, and nothing
#: can refer to it (replicas, extents and uploads name their blob in a NOT
#: NULL column and look it up by ``=``), so no replica can be found or
#: deleted through it and no file or upload reads it; GC could only trip
#: on it (its listing found a blob that ``get_blob`` could not load).
_NULL_BLOB_IDS = Only(
    "sqlite",
    "DELETE FROM blobs WHERE blob_id IS NULL",
    note="catalog upgrade: deleted {count} row(s) of blobs without a blob_id"
    " (nothing can refer to them; wsfs never writes one)",
)

MIGRATIONS: list[list[str | Only]] = [
    # 1: the namespace, blobs and upload sessions.
    [
        """CREATE TABLE inodes (
            inode {pk},
            kind TEXT NOT NULL,
            version_id {int},
            owner TEXT,
            mtime {real} NOT NULL
        )""",
        "INSERT INTO inodes (kind, mtime) VALUES ('dir', 0)",
        """CREATE TABLE dirents (
            parent {int} NOT NULL,
            name {name} NOT NULL,
            inode {int} NOT NULL UNIQUE,
            PRIMARY KEY (parent, name)
        )""",
        """CREATE TABLE versions (
            version_id {pk},
            inode {int} NOT NULL,
            size {int} NOT NULL,
            mtime {real} NOT NULL,
            etag TEXT NOT NULL,
            sha256 TEXT
        )""",
        """CREATE TABLE version_extents (
            version_id {int} NOT NULL,
            idx {int} NOT NULL,
            blob_id TEXT NOT NULL,
            blob_offset {int} NOT NULL,
            length {int} NOT NULL,
            file_offset {int} NOT NULL,
            PRIMARY KEY (version_id, idx)
        )""",
        "CREATE INDEX version_extents_blob ON version_extents (blob_id)",
        """CREATE TABLE blobs (
            blob_id TEXT PRIMARY KEY,
            length {int} NOT NULL DEFAULT 0,
            sealed {int} NOT NULL DEFAULT 0,
            wanted {int} NOT NULL,
            created_at {real} NOT NULL
        )""",
        """CREATE TABLE replicas (
            blob_id TEXT NOT NULL,
            node TEXT NOT NULL,
            state TEXT NOT NULL,
            PRIMARY KEY (blob_id, node)
        )""",
        """CREATE TABLE uploads (
            upload_id TEXT PRIMARY KEY,
            inode {int} NOT NULL,
            path TEXT NOT NULL,
            username TEXT NOT NULL,
            blob_id TEXT NOT NULL,
            blob_start {int} NOT NULL,
            checkpoint {int} NOT NULL,
            owner TEXT NOT NULL,
            epoch {int} NOT NULL,
            state TEXT NOT NULL,
            declared_length {int},
            meta TEXT NOT NULL,
            created_at {real} NOT NULL,
            updated_at {real} NOT NULL,
            expires_at {real} NOT NULL
        )""",
        f"CREATE UNIQUE INDEX uploads_live_inode ON uploads (inode) WHERE state IN {LIVE_SQL}",
        "CREATE INDEX uploads_state ON uploads (state, expires_at)",
        "CREATE INDEX uploads_blob ON uploads (blob_id)",
        "CREATE INDEX uploads_owner ON uploads (owner, state)",
        """CREATE TABLE upload_extents (
            upload_id TEXT NOT NULL,
            idx {int} NOT NULL,
            blob_id TEXT NOT NULL,
            blob_offset {int} NOT NULL,
            length {int} NOT NULL,
            file_offset {int} NOT NULL,
            PRIMARY KEY (upload_id, idx)
        )""",
        "CREATE INDEX upload_extents_blob ON upload_extents (blob_id)",
    ],
    # 2: users and the storage-server registry.
    [
        """CREATE TABLE users (
            name TEXT PRIMARY KEY,
            admin {int} NOT NULL,
            root TEXT NOT NULL,
            permissions TEXT NOT NULL,
            quota_bytes {int},
            quota_files {int},
            used_bytes {int} NOT NULL DEFAULT 0,
            used_files {int} NOT NULL DEFAULT 0,
            password_hash TEXT NOT NULL,
            created_at {real} NOT NULL
        )""",
        """CREATE TABLE nodes (
            name TEXT PRIMARY KEY,
            endpoint TEXT NOT NULL,
            state TEXT NOT NULL,
            free_bytes {int},
            total_bytes {int},
            seen_at {real}
        )""",
    ],
    # 3: admin jobs and named leases.
    [
        """CREATE TABLE jobs (
            job_id {pk},
            kind TEXT NOT NULL,
            args TEXT NOT NULL,
            state TEXT NOT NULL,
            owner TEXT,
            progress TEXT NOT NULL,
            result TEXT,
            error TEXT,
            created_at {real} NOT NULL,
            updated_at {real} NOT NULL
        )""",
        "CREATE INDEX jobs_state ON jobs (state, job_id)",
        """CREATE TABLE leases (
            name TEXT PRIMARY KEY,
            owner TEXT NOT NULL,
            expires_at {real} NOT NULL
        )""",
    ],
    # 4: why a storage server is down, for ``wsfs status`` (NULL while up).
    [
        "ALTER TABLE nodes ADD COLUMN last_error TEXT",
    ],
    # 5: one index over the live uploads only, for every query that looks
    # for uploads by state (all of them ask for live ones: expiry, a front
    # end's sessions, listings, a blob's references), instead of three over
    # every upload ever made: a commit moved a session's entry within two
    # of those (about four pages of SQLite's log per small STOR), and only
    # leaves these two; a start wrote an entry in all three, now in two.
    # The blobs of live uploads have an index of their own, of the live
    # uploads too (``_blobs.REFERENCED`` asks it per blob: whether one
    # blob is still written must not read every live upload, of which an
    # interrupted upload kept a day makes many).  A query uses either only
    # if it states the indexes' condition itself (``AND state IN
    # LIVE_SQL``): neither database infers it from ``state = ?``.
    [
        "DROP INDEX uploads_state",
        "DROP INDEX uploads_owner",
        "DROP INDEX uploads_blob",
        "CREATE INDEX uploads_live ON uploads (state, expires_at, owner) "
        f"WHERE state IN {LIVE_SQL}",
        f"CREATE INDEX uploads_live_blob ON uploads (blob_id) WHERE state IN {LIVE_SQL}",
    ],
    # 6: SQLite only (PostgreSQL always keeps rows apart from their keys):
    # the tables a small STOR inserts into that are keyed by something
    # other than an integer keep their rows in their key's b-tree, a page
    # fewer per insert (``_sqlite_keyed``).  ``uploads`` is not among
    # them: its rows (path, meta) can be large.  Copies these tables once.
    [
        *_sqlite_keyed(
            "dirents",
            {"parent": "INTEGER NOT NULL", "name": "TEXT NOT NULL", "inode": "INTEGER NOT NULL"},
            "parent, name",
            "CREATE UNIQUE INDEX dirents_inode ON dirents (inode)",
        ),
        _NULL_BLOB_IDS,
        *_sqlite_keyed(
            "blobs",
            {
                "blob_id": "TEXT NOT NULL",
                "length": "INTEGER NOT NULL DEFAULT 0",
                "sealed": "INTEGER NOT NULL DEFAULT 0",
                "wanted": "INTEGER NOT NULL",
                "created_at": "REAL NOT NULL",
            },
            "blob_id",
        ),
        *_sqlite_keyed(
            "replicas",
            {"blob_id": "TEXT NOT NULL", "node": "TEXT NOT NULL", "state": "TEXT NOT NULL"},
            "blob_id, node",
        ),
        *_sqlite_keyed(
            "version_extents",
            {"version_id": "INTEGER NOT NULL", **_EXTENT_COLUMNS},
            "version_id, idx",
            "CREATE INDEX version_extents_blob ON version_extents (blob_id)",
        ),
        *_sqlite_keyed(
            "upload_extents",
            {"upload_id": "TEXT NOT NULL", **_EXTENT_COLUMNS},
            "upload_id, idx",
            "CREATE INDEX upload_extents_blob ON upload_extents (blob_id)",
        ),
    ],
    # 7: the finished uploads by when they finished, for the purge of those
    # kept past their retention (``_uploads.purge_uploads``, run by GC):
    # without it, finding them reads every row of uploads, on a busy store
    # millions, at every GC pass.  No existing index orders uploads by time
    # (the primary key is a random token; the others cover live uploads
    # only).  Partial, so a start and a checkpoint never write to it; a
    # commit (or an abort, an expiry) adds one entry, at the index's right
    # edge (updated_at only grows), where the purge takes them from the left.
    [
        f"CREATE INDEX uploads_finished ON uploads (updated_at) WHERE state IN {FINISHED_SQL}",
    ],
    # 8: which data directory each storage server runs on (the random id
    # of its store, reported in its health answers), so that a server that
    # comes back on a wiped or replaced one is noticed by whichever front
    # end holds maintenance then, even one started since; and the last
    # such replacement, for ``wsfs status``: when, the id it replaced, and
    # how many replicas listed there were found gone (marked lost).  NULL
    # for a server that never reported an id (registered before, or older).
    [
        "ALTER TABLE nodes ADD COLUMN store_id TEXT",
        "ALTER TABLE nodes ADD COLUMN store_replaced TEXT",
        "ALTER TABLE nodes ADD COLUMN store_replaced_at {real}",
        "ALTER TABLE nodes ADD COLUMN store_lost {int}",
    ],
    # 9: which claim of a job its runner holds.  A job's owner is a front
    # end's name, which a restarted front end (or a second process given
    # the same name) shares with the run before it: a job re-queued and
    # claimed again under that name would still take the old run's
    # progress and end.  Each claim bumps ``claim``, the runner carries the
    # number it got, and every change of a running job names it too.  A
    # job claimed before the upgrade has claim 0, the number its runner,
    # of the code before, knows nothing of; its next claim makes it 1.
    # This protects only once every front end runs this code: one of the
    # code before that is still running (started before the upgrade)
    # claims without bumping ``claim`` and changes a job by owner alone.
    # Two lives of one name could also both hold the maintenance lease,
    # keyed by name alone until schema 11 gave each life a token.
    [
        "ALTER TABLE jobs ADD COLUMN claim {int} NOT NULL DEFAULT 0",
    ],
    # 10: settings of the whole catalog, by key; the first is its cluster
    # id (``cluster_id``): random, made with the catalog or at first need,
    # to which the storage servers it uses are bound (wsstorage.binding),
    # so that a second catalog pointed at them never deletes this one's
    # blobs.  A table of its own, not a column of schema_version: more
    # settings may come, each one row.
    [
        """CREATE TABLE settings (
            key TEXT PRIMARY KEY,
            value TEXT NOT NULL
        )""",
    ],
    # 11: which life of a front end holds a lease (``token``, random per
    # process), who that is (``holder``: host, pid, start) and the life it
    # was granted (``ttl_seconds``, how often it is renewed): leases go by
    # owner name, so a second process started with a front end's --name
    # renewed the first one's leases as its own.  A renewal now needs the
    # token too (``_cluster.acquire_lease``); a start watches the name's
    # liveness lease for a renewal before taking it over
    # (``wsfront.maintenance.name_claim``).  NULL in rows of older code.
    [
        "ALTER TABLE leases ADD COLUMN token TEXT",
        "ALTER TABLE leases ADD COLUMN holder TEXT",
        "ALTER TABLE leases ADD COLUMN ttl_seconds {real}",
    ],
    # 12: the bytes each user's pending uploads hold, charged toward the
    # byte quota beside ``used_bytes`` (``records.pending_charge``): counted
    # only once committed, a user could keep up to the cap of pending
    # uploads (1000 per front end), each as large as the quota still free.
    # Kept by the transactions that move an upload's checkpoint (checkpoint,
    # restart_at, commit, abort, expiry), and started here from the live
    # uploads as they are.  Only the new code keeps it: a front end of the
    # older code still running commits, aborts and expires without giving
    # the charge back and checkpoints without charging, so every front end
    # must be stopped before upgrading (docs/catalog.md, Schema).
    [
        "ALTER TABLE users ADD COLUMN pending_bytes {int} NOT NULL DEFAULT 0",
        "UPDATE users SET pending_bytes = " + PENDING_OF_USER_SQL.format(user="users.name"),
    ],
]

LATEST = len(MIGRATIONS)


def current_version(tx) -> int:
    """The schema version of the database behind ``tx`` (0: empty)."""
    tx.execute("CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL)")
    row = tx.one("SELECT version FROM schema_version")
    if row is None:
        tx.execute("INSERT INTO schema_version (version) VALUES (0)")
        return 0
    return int(row["version"])


def migrate(tx, dialect: dict[str, str], target: int = LATEST) -> int:
    """Bring the schema up to ``target`` inside the caller's write
    transaction; return the version found before.  SchemaTooNew if the
    database is ahead of this code."""
    found = current_version(tx)
    if found > LATEST:
        raise SchemaTooNew(f"catalog schema is version {found}; this wsfs knows up to {LATEST}")
    if 0 < found < target:
        # It may take minutes (schema 6 copies tables on SQLite), holding
        # the write lock: say what the front end is doing.
        log.info(
            "catalog schema {found} is older than this wsfs's {target}: upgrading it",
            found=found,
            target=target,
        )
    for number in range(found + 1, target + 1):
        for statement in MIGRATIONS[number - 1]:
            note = None
            if isinstance(statement, Only):
                if statement.backend != tx.backend.name:
                    continue
                statement, note = statement.sql, statement.note
            changed = tx.execute(statement.format(**dialect))
            if note and changed > 0:
                log.warn(note, count=changed)
        tx.execute("UPDATE schema_version SET version = ?", number)
    return found
