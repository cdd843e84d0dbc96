"""``wsfs backup FILE`` refuses a FILE the copy's rename would wreck: the
live catalog or one of its side files (a front end keeps writing to the
unlinked inode, and every change after the backup is lost at its restart),
and anything that is not a regular file (``/dev/null`` turned into one).
Stand-ins in ``tmp_path`` only: never the real ``/dev/null``."""

from __future__ import annotations

import os
import socket
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support import python_env


@pytest.fixture(autouse=True)
def _in_tmp_path(tmp_path, monkeypatch):
    """Every wsfs here runs in ``tmp_path``: a relative FILE (or a
    temporary made beside one, ``.tmp`` for an empty name before it was
    refused) must never land in the checkout a test was started from."""
    monkeypatch.chdir(tmp_path)


def wsfs(catalog: str, *args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "wsfront.cli", "--catalog", catalog, *args],
        input="pw-123456\n", capture_output=True, text=True, env=python_env(),
        cwd=cwd, timeout=60,
    )  # fmt: skip


def refused(proc: subprocess.CompletedProcess, *words: str) -> None:
    """Exit 1, no traceback, one ``wsfs: ...`` line naming ``words``."""
    assert proc.returncode == 1, (proc.returncode, proc.stdout, proc.stderr)
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("wsfs: "), proc.stderr
    for word in words:
        assert word in lines[0], proc.stderr


@pytest.fixture
def live(tmp_path):
    """A catalog with a user, and what its files are before any backup."""
    path = tmp_path / "d" / "catalog.sqlite"
    path.parent.mkdir()
    url = f"sqlite:///{path}"
    assert wsfs(url, "user", "add", "ann").returncode == 0
    return url, path


def _identity(path: Path) -> tuple[int, int, bytes]:
    st = path.stat()
    return st.st_dev, st.st_ino, path.read_bytes()


def test_the_catalog_itself_is_refused_however_it_is_spelt(live, tmp_path):
    url, path = live
    before = _identity(path)
    (tmp_path / "link").symlink_to(path)
    os.link(path, tmp_path / "hard")
    spellings = [
        str(path),
        str(path.parent / ".." / "d" / "catalog.sqlite"),
        str(tmp_path / "link"),
        str(tmp_path / "hard"),
    ]
    for dest in spellings:
        refused(wsfs(url, "backup", dest), "catalog", "another file")
    refused(wsfs(url, "backup", "catalog.sqlite", cwd=path.parent), "catalog")
    assert _identity(path) == before
    assert sorted(p.name for p in path.parent.iterdir() if ".tmp" in p.name) == []
    assert "\nann " in wsfs(url, "user", "list").stdout


def test_the_catalogs_side_files_are_refused_even_before_they_exist(live):
    url, path = live
    for suffix in ("-wal", "-shm", "-journal"):
        side = Path(str(path) + suffix)
        existed = side.exists()
        refused(wsfs(url, "backup", str(side)), "catalog", suffix)
        assert side.exists() == existed


def test_the_side_files_of_a_catalog_named_through_a_symlink_are_refused(tmp_path):
    """SQLite keeps the -wal beside the real file, not beside the link
    --catalog names: the real file's -wal is the live one."""
    real = tmp_path / "real" / "cat.sqlite"
    real.parent.mkdir()
    link = tmp_path / "link.sqlite"
    link.symlink_to(real)
    url = f"sqlite:///{link}"
    assert wsfs(url, "user", "add", "ann").returncode == 0
    for suffix in ("-wal", "-shm", "-journal"):
        side = Path(str(real) + suffix)
        existed = side.exists()
        refused(wsfs(url, "backup", str(side)), "catalog", suffix)
        assert side.exists() == existed
        refused(wsfs(url, "backup", str(link) + suffix), "catalog", suffix)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["link.sqlite", "real"]


def test_what_is_not_a_regular_file_is_left_alone(live, tmp_path):
    """A fifo and a socket stand in for a device such as ``/dev/null``."""
    url, _ = live
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    refused(wsfs(url, "backup", str(fifo)), str(fifo), "not a regular file")
    assert fifo.is_fifo()
    sock_dir = tmp_path / "s"
    sock_dir.mkdir()
    with socket.socket(socket.AF_UNIX) as sock:
        cwd = os.getcwd()
        os.chdir(sock_dir)  # a short name: AF_UNIX paths are limited to ~107 bytes
        try:
            sock.bind("sock")
        finally:
            os.chdir(cwd)
        refused(wsfs(url, "backup", "sock", cwd=sock_dir), "not a regular file")
        assert (sock_dir / "sock").is_socket()


def test_an_empty_file_name_is_one_clear_line(live):
    url, _ = live
    refused(wsfs(url, "backup", ""), "no backup FILE")


def test_a_regular_file_is_still_replaced_and_no_temporary_is_left(live, tmp_path):
    url, _ = live
    dest = tmp_path / "old.bak"
    dest.write_bytes(b"an older backup")
    # A file of the old temporary name is never written into.
    (tmp_path / "old.bak.tmp").write_bytes(b"someone else's")
    done = wsfs(url, "backup", str(dest))
    assert done.returncode == 0, done.stderr
    assert dest.read_bytes().startswith(b"SQLite format 3\x00")
    assert (tmp_path / "old.bak.tmp").read_bytes() == b"someone else's"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["d", "old.bak", "old.bak.tmp"]


def test_the_backup_is_readable_by_its_owner_only(live, tmp_path):
    """It holds the users' password hashes: mode 0600, new or replacing
    an older backup that was world-readable."""
    url, _ = live
    new, old = tmp_path / "new.bak", tmp_path / "old.bak"
    old.write_bytes(b"an older backup")
    old.chmod(0o644)
    for dest in (new, old):
        done = wsfs(url, "backup", str(dest))
        assert done.returncode == 0, done.stderr
        assert stat.S_IMODE(dest.stat().st_mode) == 0o600, oct(dest.stat().st_mode)


def test_a_dying_backup_removes_its_copy_and_the_copy_s_journal(tmp_path):
    """SQLite writes a rollback journal beside the copy while it fills it:
    a Ctrl-C mid-backup (``remove_temporaries`` as the process dies) takes
    both, not the copy alone."""
    from wsfront.maintenance import backup

    tmp = tmp_path / "b.sqlite.x1y2.tmp"
    journal = tmp_path / "b.sqlite.x1y2.tmp-journal"
    tmp.write_bytes(b"copy")
    journal.write_bytes(b"journal")
    backup._TEMPORARIES.add(str(tmp))
    try:
        backup.remove_temporaries()
    finally:
        backup._TEMPORARIES.discard(str(tmp))
    assert sorted(tmp_path.iterdir()) == []
