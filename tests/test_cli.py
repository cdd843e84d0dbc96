"""The ``wsfs`` admin command line against a real SQLite catalog."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

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
