"""The ``wsfs`` CLI never echoes a catalog URL's password: its error lines
end up in terminals, scroll-back, tickets and CI logs.  PostgreSQL here
trusts every connection, so any password is accepted and a wrong one
still reaches the errors that quote the URL."""

from __future__ import annotations

import shutil
import socket
import stat
import subprocess
import sys
from pathlib import Path
from urllib.parse import urlparse

import pytest

from tests.support import postgres_url, python_env
from wsfront.cli_output import masked_url

SECRET = "S3cretPW"


def wsfs(catalog: str, *args: str, cwd=None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "wsfront.cli", "--catalog", catalog, *args],
        capture_output=True, text=True, env=python_env(), cwd=cwd, timeout=60,
    )  # fmt: skip


def with_password(url: str, database: str | None = None) -> str:
    parsed = urlparse(url)
    netloc = f"{parsed.username or 'postgres'}:{SECRET}@{parsed.hostname}:{parsed.port or 5432}"
    return parsed._replace(netloc=netloc, path=database or parsed.path).geturl()


def masked_error(proc: subprocess.CompletedProcess, *words: str) -> None:
    assert proc.returncode == 1, (proc.returncode, proc.stderr)
    assert SECRET not in proc.stderr + proc.stdout, proc.stderr
    assert ":***@" in proc.stderr, proc.stderr
    for word in words:
        assert word in proc.stderr, proc.stderr


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("postgresql://u:pw@h:5/db", "postgresql://u:***@h:5/db"),
        ("postgresql://u:p@w@h/db", "postgresql://u:***@h/db"),
        ("postgresql://u@h/db?password=pw&sslmode=require",
         "postgresql://u@h/db?password=***&sslmode=require"),
        ("postgresql://u@h/db", "postgresql://u@h/db"),
        ("sqlite:////var/lib/wsfs/catalog.sqlite", "sqlite:////var/lib/wsfs/catalog.sqlite"),
    ],
)  # fmt: skip
def test_masked_url(url, shown):
    assert masked_url(url) == shown


@pytest.mark.postgres
def test_an_unknown_database_or_a_refused_server_is_named_without_the_password():
    base = postgres_url()
    masked_error(wsfs(with_password(base, "/wsfs_no_such_db"), "status"), "wsfs_no_such_db")
    with socket.socket() as refused:  # bound, never listening
        refused.bind(("127.0.0.1", 0))
        port = refused.getsockname()[1]
        url = f"postgresql://postgres:{SECRET}@127.0.0.1:{port}/x"
        masked_error(wsfs(url, "status"), "cannot use the catalog")


def test_a_mistyped_scheme_is_named_without_the_password():
    masked_error(wsfs(f"postgresq://postgres:{SECRET}@127.0.0.1/x", "status"), "not a catalog URL")


@pytest.mark.postgres
def test_a_database_without_a_catalog_is_named_without_the_password():
    from tests.catalog_fixtures import postgres_schema_url

    for url in postgres_schema_url():
        masked_error(wsfs(with_password(url), "status"), "no catalog in")


def children(pid: int) -> list[int]:
    """The processes whose parent is ``pid``."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:  # gone meanwhile
                continue
            if int(stat.rpartition(")")[2].split()[1]) == pid:
                found.append(int(entry.name))
    return found


def pg_dump_of(proc: subprocess.Popen) -> int:
    """The pg_dump that ``proc`` runs (once it runs one)."""
    while True:
        assert proc.poll() is None, proc.communicate()
        for child in children(proc.pid):
            try:
                if Path(f"/proc/{child}/comm").read_text().strip() == "pg_dump":
                    return child
            except OSError:  # gone meanwhile
                continue


@pytest.mark.postgres
def test_pg_dump_gets_the_password_in_its_environment_and_a_failure_is_named_without_it(
    tmp_path,
):
    """A real catalog, and a pg_dump that reaches it (trust: any password
    does), held on a lock this test takes on the users table: its command
    line, which every local user can read, has no password; its
    environment (its user's only) has PGPASSWORD.  Its backend is then
    terminated: pg_dump fails, the CLI says so without the password and
    leaves no temporary file.  Without the lock, the backup is written,
    mode 0600 (it holds the password hashes)."""
    import psycopg

    from tests.catalog_fixtures import postgres_schema_url

    if shutil.which("pg_dump") is None:
        pytest.skip("pg_dump is not installed")
    for schema_url in postgres_schema_url():
        url = with_password(schema_url)
        add = subprocess.run(
            [sys.executable, "-m", "wsfront.cli", "--catalog", url, "user", "add", "ann"],
            input="pw-123456\n", capture_output=True, text=True, env=python_env(), timeout=60,
        )  # fmt: skip
        assert add.returncode == 0, add.stderr
        dest = tmp_path / "cat.dump"
        with psycopg.connect(schema_url) as holder:
            holder.execute("LOCK TABLE users IN ACCESS EXCLUSIVE MODE")
            proc = subprocess.Popen(
                [sys.executable, "-m", "wsfront.cli", "--catalog", url, "backup", str(dest)],
                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=python_env(),
            )  # fmt: skip
            try:
                dumper = pg_dump_of(proc)
                cmdline = Path(f"/proc/{dumper}/cmdline").read_bytes()
                environ = Path(f"/proc/{dumper}/environ").read_bytes().split(b"\0")
                with psycopg.connect(schema_url, autocommit=True) as watcher:
                    backend = None
                    while backend is None:
                        backend = watcher.execute(
                            # Blocked by this test's lock: another suite's
                            # pg_dump on the same server waits on its own.
                            "SELECT pid FROM pg_stat_activity WHERE application_name = 'pg_dump'"
                            " AND %s = ANY(pg_blocking_pids(pid))",
                            (holder.info.backend_pid,),
                        ).fetchone()
                    watcher.execute("SELECT pg_terminate_backend(%s)", backend)
                out, err = proc.communicate(timeout=60)
            finally:
                if proc.poll() is None:
                    proc.kill()
                    proc.wait()
            holder.rollback()
        assert SECRET.encode() not in cmdline, cmdline
        assert b"PGPASSWORD=" + SECRET.encode() in environ
        assert proc.returncode == 1, (proc.returncode, out, err)
        assert "pg_dump failed" in err and SECRET not in out + err, err
        assert sorted(p.name for p in tmp_path.iterdir()) == []

        # Another schema of the same database is not the catalog's: the
        # dump holds the catalog's schema alone.
        decoy = "wsfs_decoy_" + schema_url.rsplit("wsfs_test_", 1)[1]
        with psycopg.connect(schema_url, autocommit=True) as conn:
            conn.execute(f"CREATE SCHEMA {decoy}")
            conn.execute(f"CREATE TABLE {decoy}.other_app (x int)")
        try:
            done = wsfs(url, "backup", str(dest))
        finally:
            with psycopg.connect(schema_url, autocommit=True) as conn:
                conn.execute(f"DROP SCHEMA {decoy} CASCADE")
        assert done.returncode == 0, done.stderr
        assert dest.read_bytes().startswith(b"PGDMP")
        assert stat.S_IMODE(dest.stat().st_mode) == 0o600
        listing = subprocess.run(
            ["pg_restore", "--list", str(dest)], capture_output=True, text=True, check=True
        ).stdout
        assert " users " in listing and "other_app" not in listing, listing


@pytest.mark.postgres
def test_a_failed_pg_dump_rename_or_start_leaves_no_temporary(tmp_path):
    """Real failures: the rename onto a directory (``backup_postgres``
    called without ``wsfs backup``'s checks), a password pg_dump cannot
    be given (NUL: its environment refuses it, subprocess raises)."""
    from tests.catalog_fixtures import postgres_schema_url
    from wsfront.maintenance.backup import backup_postgres

    if shutil.which("pg_dump") is None:
        pytest.skip("pg_dump is not installed")
    for schema_url in postgres_schema_url():
        url = with_password(schema_url)
        add = subprocess.run(
            [sys.executable, "-m", "wsfront.cli", "--catalog", url, "user", "add", "ann"],
            input="pw-123456\n", capture_output=True, text=True, env=python_env(), timeout=60,
        )  # fmt: skip
        assert add.returncode == 0, add.stderr
        taken = tmp_path / "taken"
        (taken / "inside").mkdir(parents=True)
        with pytest.raises(OSError):
            backup_postgres(url, str(taken))
        assert sorted(p.name for p in tmp_path.iterdir()) == ["taken"]
        with pytest.raises(ValueError):
            backup_postgres(url.replace(SECRET, "nul%00"), str(tmp_path / "x.dump"))
        assert sorted(p.name for p in tmp_path.iterdir()) == ["taken"]


@pytest.mark.parametrize(
    ("url", "bare", "password"),
    [
        ("postgresql://u:p%40w@h:5/db?sslmode=require", "postgresql://u@h:5/db?sslmode=require",
         "p@w"),
        ("postgresql://u@h/db?password=a%20b&options=-csearch_path%3Ds",
         "postgresql://u@h/db?options=-csearch_path%3Ds", "a b"),
        ("postgresql://u@h/db", "postgresql://u@h/db", None),
        # libpq reads "+" as itself, never as a space, in the password and
        # in the parameters kept.
        ("postgresql://u@h/db?password=a+b&application_name=x+y",
         "postgresql://u@h/db?application_name=x+y", "a+b"),
    ],
)  # fmt: skip
def test_the_password_is_taken_out_of_the_url_for_pg_dump(url, bare, password):
    from wsfront.maintenance.backup import _password_apart

    assert _password_apart(url) == (bare, password)


def test_backup_of_an_unknown_scheme_names_it_without_the_password(tmp_path):
    """The CLI refuses such a URL first; ``backup_catalog`` alone must not leak it either."""
    from wsfront.maintenance.backup import backup_catalog

    with pytest.raises(ValueError) as refused:
        backup_catalog(f"mysql://u:{SECRET}@h/db", str(tmp_path / "x"))
    assert SECRET not in str(refused.value) and "u:***@h" in str(refused.value)


#: Passwords ``repr`` escapes (a backslash, quotes): the quoted URL in a
#: message showed them as ``a\\b``, which no plain search for the URL found.
ESCAPED = ["a\\b" + SECRET, "a'b\"c" + SECRET, "tab\t" + SECRET]


@pytest.mark.parametrize("password", ESCAPED)
@pytest.mark.parametrize(
    "form", ["postgresq://postgres:{}@127.0.0.1/x", "sqlite://u:{}@h/x.sqlite"]
)
def test_a_password_repr_escapes_is_masked_too(form, password):
    """A mistyped scheme, a SQLite URL with a host: both quote the URL."""
    proc = wsfs(form.format(password), "status")
    assert proc.returncode == 1, proc.stderr
    for shown in (password, repr(password)[1:-1], SECRET):
        assert shown not in proc.stderr + proc.stdout, proc.stderr
    assert ":***@" in proc.stderr, proc.stderr


@pytest.mark.parametrize("password", ESCAPED)
def test_the_front_ends_catalog_option_is_named_without_the_password(password, tmp_path):
    from twisted.python import usage

    from wsfront.config import FrontendOptions

    secret = tmp_path / "secret"
    secret.write_text("s" * 32)
    opts = FrontendOptions()
    with pytest.raises(usage.UsageError) as refused:
        opts.parseOptions(
            ["--name", "a", "--catalog", f"mysql://u:{password}@h/db", "--ftp", "tcp:1",
             "--secret-file", str(secret), "--storage", "s1=tcp:127.0.0.1:1"]
        )  # fmt: skip
    assert SECRET not in str(refused.value) and "u:***@h" in str(refused.value), refused.value
