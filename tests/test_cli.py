"""The ``wsfs`` admin command line against a real SQLite catalog."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
from urllib.parse import urlparse

import pytest
import pytest_twisted

from tests.support import python_env


def wsfs(catalog: str, *args: str, stdin: str = "") -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "wsfront.cli", "--catalog", catalog, *args],
        input=stdin,
        capture_output=True,
        text=True,
        env=python_env(),
        timeout=60,
    )


@pytest.fixture
def catalog(tmp_path):
    return f"sqlite:///{tmp_path / 'catalog.sqlite'}"


def test_user_add_list_and_delete(catalog):
    added = wsfs(catalog, "user", "add", "alice", "--admin", stdin="s3cret-password\n")
    assert added.returncode == 0, added.stderr
    assert "user alice added (root /alice)" in added.stdout
    listed = wsfs(catalog, "--json", "user", "list")
    [user] = json.loads(listed.stdout)
    assert (user["name"], user["admin"], user["root"]) == ("alice", True, "/alice")
    assert "password" not in json.dumps(user).lower()
    table = wsfs(catalog, "user", "list").stdout.splitlines()
    assert table[0].split()[:3] == ["NAME", "ADMIN", "ROOT"]
    assert table[1].split()[:3] == ["alice", "yes", "/alice"]
    assert table[0].split()[-3:] == ["FILES", "PENDING", "QUOTA"]
    assert user["pending_bytes"] == 0
    assert wsfs(catalog, "user", "del", "alice").returncode == 0
    assert json.loads(wsfs(catalog, "--json", "user", "list").stdout) == []


def test_password_from_a_file_and_quota(catalog, tmp_path):
    pw = tmp_path / "pw"
    pw.write_text("from-a-file\n")
    assert wsfs(catalog, "user", "add", "bob", "--password-file", str(pw)).returncode == 0
    quota = wsfs(catalog, "--json", "user", "quota", "bob", "--bytes", "1000", "--files", "3")
    assert quota.returncode == 0, quota.stderr
    assert json.loads(quota.stdout)["quota_bytes"] == 1000


def test_errors_are_one_clear_line_and_a_nonzero_exit(catalog):
    gone = wsfs(catalog, "user", "del", "nobody")
    assert gone.returncode == 1
    assert gone.stderr.strip().startswith("wsfs: ")
    assert "Traceback" not in gone.stderr
    assert wsfs(catalog, "user", "add", "x", stdin="\n").returncode != 0
    wsfs(catalog, "user", "add", "dup", stdin="pw-123456\n")
    dup = wsfs(catalog, "user", "add", "dup", stdin="pw-123456\n")
    assert dup.returncode == 1 and "Traceback" not in dup.stderr


def test_status_sessions_and_ls_on_an_empty_cluster(catalog):
    wsfs(catalog, "user", "add", "carol", stdin="pw-123456\n")
    status = json.loads(wsfs(catalog, "--json", "status").stdout)
    assert status["files"] == 0 and status["under_replicated"] == 0
    assert json.loads(wsfs(catalog, "--json", "sessions").stdout) == []
    listing = wsfs(catalog, "ls", "/").stdout
    assert "carol/" in listing


def test_json_may_come_after_the_command_too(catalog):
    """``wsfs --catalog URL status --json``, where scripts often put it."""
    wsfs(catalog, "user", "add", "carol", stdin="pw-123456\n")
    after = wsfs(catalog, "status", "--json")
    assert after.returncode == 0, after.stderr
    assert json.loads(after.stdout)["files"] == 0
    [user] = json.loads(wsfs(catalog, "user", "list", "--json").stdout)
    assert user["name"] == "carol"
    assert wsfs(catalog, "user", "list").stdout.startswith("NAME")  # tables without it


def test_json_and_catalog_may_come_between_group_and_command(catalog):
    """``wsfs user --json list`` was "unrecognized arguments: --json": only
    the top-level parser and each command's took it, not a group's."""
    wsfs(catalog, "user", "add", "carol", stdin="pw-123456\n")
    between = wsfs(catalog, "user", "--json", "list")
    assert between.returncode == 0, between.stderr
    assert [u["name"] for u in json.loads(between.stdout)] == ["carol"]
    there = subprocess.run(
        [sys.executable, "-m", "wsfront.cli", "user", "--catalog", catalog, "list"],
        capture_output=True, text=True, env=python_env(), timeout=60,
    )  # fmt: skip
    assert there.returncode == 0, there.stderr
    assert there.stdout.startswith("NAME")


def test_catalog_may_come_after_the_command_too(catalog):
    """``wsfs status --catalog URL`` was "required: --catalog", given as it was."""
    wsfs(catalog, "user", "add", "carol", stdin="pw-123456\n")
    after = subprocess.run(
        [sys.executable, "-m", "wsfront.cli", "status", "--catalog", catalog, "--json"],
        capture_output=True, text=True, env=python_env(), timeout=60,
    )  # fmt: skip
    assert after.returncode == 0, after.stderr
    assert json.loads(after.stdout)["dirs"] == 2
    neither = subprocess.run(
        [sys.executable, "-m", "wsfront.cli", "status"],
        capture_output=True, text=True, env=python_env(), timeout=60,
    )  # fmt: skip
    assert neither.returncode == 2 and "required: --catalog" in neither.stderr


class _Terminal:
    """A stand-in terminal: records writes, says it is a TTY (or not)."""

    def __init__(self, tty: bool) -> None:
        self.tty = tty
        self.text = ""

    def isatty(self) -> bool:
        return self.tty

    def write(self, s: str) -> None:
        self.text += s

    def flush(self) -> None:
        pass


@pytest.mark.parametrize("tty", [True, False])
def test_job_progress_is_a_bar_on_a_terminal_and_plain_lines_otherwise(tty):
    import argparse
    from types import SimpleNamespace

    from wsfront.cli import Commands

    out = _Terminal(tty)
    commands = Commands(None, argparse.Namespace(json=False), out)
    job = SimpleNamespace(job_id=7, state="running",
                          progress={"phase": "copying", "copied": 5, "total": 10})  # fmt: skip
    commands._show_progress("repair", job)
    if tty:
        assert out.text.startswith("\rrepair [") and "5/10" in out.text
        assert "#" * 15 + "-" * 15 in out.text and "\n" not in out.text
    else:
        assert out.text == "repair job 7: running {'phase': 'copying', 'copied': 5, 'total': 10}\n"


def _one_line_error(proc: subprocess.CompletedProcess, *words: str) -> None:
    """Exit 1, no traceback, one ``wsfs: ...`` line naming ``words``."""
    assert proc.returncode == 1, (proc.returncode, proc.stderr)
    assert "Traceback" not in proc.stderr, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("wsfs: "), proc.stderr
    for word in words:
        assert word in lines[0], proc.stderr


@pytest.mark.parametrize(
    ("url", "words"),
    [
        ("foo://bar", ["sqlite:///", "postgresql://"]),
        ("sqlite://relative.sqlite", ["absolute path"]),
        ("/srv/wsfs/catalog.sqlite", ["sqlite:///"]),
        ("relative.sqlite", ["sqlite:///"]),
    ],
)
def test_a_malformed_catalog_url_is_one_line_not_a_traceback(tmp_path, url, words):
    proc = subprocess.run(
        [sys.executable, "-m", "wsfront.cli", "--catalog", url, "status"],
        capture_output=True, text=True, env=python_env(), timeout=60, cwd=tmp_path,
    )  # fmt: skip
    _one_line_error(proc, *words)
    assert list(tmp_path.iterdir()) == []


def test_a_missing_catalog_is_an_error_not_an_empty_healthy_cluster(tmp_path):
    """A typo in the path must not create a catalog and report it healthy."""
    typo = tmp_path / "no" / "such" / "catalog.sqlite"
    for command in (["status"], ["sessions"], ["user", "list"], ["repair", "--timeout", "1"]):
        _one_line_error(wsfs(f"sqlite:///{typo}", *command), "no catalog at", str(typo))
    # user add may create a catalog (how a cluster is set up), but not directories.
    added = wsfs(f"sqlite:///{typo}", "user", "add", "ann", stdin="pw-123456\n")
    _one_line_error(added, "no directory")
    assert not (tmp_path / "no").exists()


def test_user_add_creates_a_catalog_in_an_existing_directory(catalog):
    assert wsfs(catalog, "user", "add", "ann", stdin="pw-123456\n").returncode == 0
    assert wsfs(catalog, "status").returncode == 0


def test_an_unreachable_postgresql_catalog_is_one_line():
    with socket.socket() as refused:  # bound, never listening: connects are refused
        refused.bind(("127.0.0.1", 0))
        url = f"postgresql://nobody@127.0.0.1:{refused.getsockname()[1]}/x"
        _one_line_error(wsfs(url, "status"), "cannot use the catalog", "refused")


def test_an_unknown_postgresql_database_is_one_line():
    from tests.support import postgres_url

    parsed = urlparse(postgres_url())
    url = parsed._replace(path="/wsfs_no_such_database").geturl()
    _one_line_error(wsfs(url, "status"), "cannot use the catalog", "wsfs_no_such_database")


@pytest.mark.postgres
def test_a_postgresql_database_without_a_catalog_is_an_error_not_an_empty_healthy_cluster():
    """The wrong (existing) database must neither get wsfs's tables nor be
    reported as an empty, healthy cluster, as for a mistyped SQLite path;
    ``user add`` still sets a new catalog up there."""
    import psycopg

    from tests.catalog_fixtures import postgres_schema_url

    for url in postgres_schema_url():  # an empty schema of its own, dropped after
        for command in (["status"], ["sessions"], ["user", "list"], ["ls", "/"]):
            _one_line_error(wsfs(url, *command), "no catalog in")
        with psycopg.connect(url) as conn:
            assert conn.execute("SELECT to_regclass('schema_version')").fetchone()[0] is None
            # Another tool's table of that name (Flyway's, once) is no catalog.
            conn.execute("CREATE TABLE schema_version (version integer)")
        _one_line_error(wsfs(url, "status"), "no catalog in")
        with psycopg.connect(url) as conn:
            assert conn.execute("SELECT to_regclass('dirents')").fetchone()[0] is None
            conn.execute("DROP TABLE schema_version")
        added = wsfs(url, "user", "add", "ann", stdin="pw-123456\n")
        assert added.returncode == 0, added.stderr
        status = wsfs(url, "status")
        assert status.returncode == 0, status.stderr


def test_a_backup_to_a_directory_or_into_a_missing_one_is_one_line_blaming_the_file(
    catalog, tmp_path
):
    """Not "catalog ...: unable to open database file" (the catalog is fine)
    nor a FILE.tmp left beside a directory."""
    assert wsfs(catalog, "user", "add", "ann", stdin="pw-123456\n").returncode == 0
    _one_line_error(wsfs(catalog, "backup", str(tmp_path)), str(tmp_path), "is a directory")
    missing = tmp_path / "no" / "x.bak"
    _one_line_error(wsfs(catalog, "backup", str(missing)), "no directory", str(missing.parent))
    assert not (tmp_path.parent / (tmp_path.name + ".tmp")).exists()


@pytest.mark.postgres
def test_a_failed_pg_dump_is_one_line_with_its_reason(tmp_path):
    import shutil

    from tests.support import missing, postgres_url
    from wsfront.maintenance.backup import BackupFailed, backup_postgres

    if shutil.which("pg_dump") is None:
        missing("pg_dump is not installed")
    url = urlparse(postgres_url())._replace(path="/wsfs_no_such_database").geturl()
    with pytest.raises(BackupFailed, match=r"pg_dump failed: .*wsfs_no_such_database"):
        backup_postgres(url, str(tmp_path / "x.dump"))
    assert list(tmp_path.iterdir()) == []


def test_a_password_that_is_not_utf8_is_refused_in_one_line(tmp_path):
    catalog = f"sqlite:///{tmp_path / 'c.sqlite'}"
    proc = subprocess.run(
        [sys.executable, "-m", "wsfront.cli", "--catalog", catalog, "user", "add", "x"],
        input=b"\xff\n", capture_output=True, env=python_env(), timeout=60,
    )  # fmt: skip
    text = subprocess.CompletedProcess(proc.args, proc.returncode, "", proc.stderr.decode())
    _one_line_error(text, "UTF-8")


def test_output_into_a_closed_pipe_exits_quietly(catalog):
    assert wsfs(catalog, "user", "add", "ann", stdin="pw-123456\n").returncode == 0
    proc = subprocess.Popen(
        [sys.executable, "-m", "wsfront.cli", "--catalog", catalog, "--json", "status"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=python_env(),
    )  # fmt: skip
    proc.stdout.close()  # like `| head` that has already gone
    err = proc.stderr.read().decode()
    assert proc.wait(60) != 0
    assert err == ""


def test_negative_quotas_are_refused(catalog):
    wsfs(catalog, "user", "add", "ann", stdin="pw-123456\n")
    for option in ("--bytes", "--files"):
        proc = wsfs(catalog, "user", "quota", "ann", option, "-5")
        assert proc.returncode == 2 and "less than 0" in proc.stderr, proc.stderr
    refused = wsfs(catalog, "user", "add", "bob", "--quota-bytes", "-1", stdin="pw-123456\n")
    assert refused.returncode == 2
    [ann] = json.loads(wsfs(catalog, "--json", "user", "list").stdout)
    assert ann["quota_bytes"] is None and ann["quota_files"] is None


def test_a_user_name_with_a_colon_is_refused_it_could_never_log_in_over_http(catalog):
    _one_line_error(wsfs(catalog, "user", "add", "a:b", stdin="pw-123456\n"), "':'")
    wsfs(catalog, "user", "add", "ann", stdin="pw-123456\n")
    assert [u["name"] for u in json.loads(wsfs(catalog, "--json", "user", "list").stdout)] == [
        "ann"
    ]


def test_repair_with_no_front_end_says_so_at_once_and_again_while_queued(catalog):
    wsfs(catalog, "user", "add", "ann", stdin="pw-123456\n")
    # The nag at 0.5 s must come before the deadline: 2 s left a loaded
    # machine too little room (one slow catalog poll skipped past it).
    proc = wsfs(catalog, "repair", "--timeout", "5", "--poll", "0.05", "--no-taker-after", "0.5")
    assert proc.returncode == 1
    lines = proc.stderr.strip().splitlines()
    assert "no front end is running to run the repair job" in lines[0]
    assert "still queued after" in lines[1] and "no front end has taken it" in lines[1]
    assert "Traceback" not in proc.stderr


@pytest_twisted.ensureDeferred
async def test_repair_with_a_front_end_holding_the_lease_does_not_say_none_runs(catalog):
    from twisted.internet import reactor, threads

    from wsfront.catalog import open_catalog
    from wsfront.maintenance.lease import LEASE_NAME

    wsfs(catalog, "user", "add", "ann", stdin="pw-123456\n")
    cat = open_catalog(reactor, catalog)
    try:
        assert await cat.acquire_lease(LEASE_NAME, "fe-a", 60.0)
        proc = await threads.deferToThread(
            wsfs, catalog, "repair", "--timeout", "1", "--poll", "0.05", "--no-taker-after", "30"
        )
        assert proc.returncode == 1
        assert "no front end is running" not in proc.stderr
        # The probe left the lease with its holder.
        assert not await cat.acquire_lease(LEASE_NAME, "fe-b", 60.0)
    finally:
        await cat.close()


@pytest_twisted.ensureDeferred
async def test_asking_whether_a_front_end_runs_leaves_an_expired_lease_alone(catalog):
    """An expired maintenance lease means no front end runs jobs now; the
    CLI says so by reading it, and its holder's row stays as it was (a
    front end renewing late finds its own lease, not one a probe took)."""
    from twisted.internet import reactor, threads

    from wsfront.catalog import open_catalog
    from wsfront.maintenance.lease import LEASE_NAME

    wsfs(catalog, "user", "add", "ann", stdin="pw-123456\n")
    cat = open_catalog(reactor, catalog, clock=lambda: 1000.0)
    try:
        assert await cat.acquire_lease(LEASE_NAME, "fe-a", 60.0)
        proc = await threads.deferToThread(
            wsfs, catalog, "repair", "--timeout", "0.2", "--poll", "0.05", "--no-taker-after", "30"
        )
        assert proc.returncode == 1
        assert "no front end is running to run the repair job" in proc.stderr
        assert await cat.list_leases(LEASE_NAME) == {LEASE_NAME: ("fe-a", 1060.0)}
    finally:
        await cat.close()
