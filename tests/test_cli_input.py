"""What the ``wsfs`` CLI refuses up front, in one clear line, before it
touches the catalog: option values out of range, passwords no client could
send or that cannot be read."""

from __future__ import annotations

import subprocess
import sys

import pytest

from tests.support import python_env


def wsfs(catalog: str, *args: str, stdin: str | bytes = "") -> subprocess.CompletedProcess:
    """The CLI's exit code, with stdout and stderr decoded (stdin may be bytes)."""
    data = stdin.encode() if isinstance(stdin, str) else stdin
    proc = subprocess.run(
        [sys.executable, "-m", "wsfront.cli", "--catalog", catalog, *args],
        input=data, capture_output=True, env=python_env(), timeout=60,
    )  # fmt: skip
    return subprocess.CompletedProcess(
        proc.args, proc.returncode, proc.stdout.decode(), proc.stderr.decode()
    )


@pytest.fixture
def catalog(tmp_path):
    url = f"sqlite:///{tmp_path / 'catalog.sqlite'}"
    assert wsfs(url, "user", "add", "ann", stdin="pw-123456\n").returncode == 0
    return url


def no_traceback(proc: subprocess.CompletedProcess, code: int, *words: str) -> str:
    """Exit ``code``, no traceback; the last stderr line names ``words``."""
    assert proc.returncode == code, (proc.returncode, proc.stderr)
    assert "Traceback" not in proc.stderr, proc.stderr
    last = proc.stderr.strip().splitlines()[-1]
    for word in words:
        assert word in last, proc.stderr
    return last


@pytest.mark.parametrize("grace", ["-1", "-0.5", "inf", "nan"])
def test_gc_grace_below_0_says_0_or_more(catalog, grace):
    """0 is accepted (free now), so "not a positive number" misled."""
    last = no_traceback(wsfs(catalog, "gc", "--grace", grace), 2, "0 or more")
    assert "positive" not in last


@pytest.mark.parametrize(
    ("typed", "named"),
    [(b"p\x00w\n", "NUL"), (b"p\rw\n", "CR"), (b"p\x00\rw\r\n", "NUL, CR")],
)
def test_a_password_no_ftp_client_could_send_is_refused(catalog, tmp_path, typed, named):
    """On stdin and in a password file, for ``user add`` and ``passwd``."""
    no_traceback(wsfs(catalog, "user", "add", "nulpw", stdin=typed), 1, named, "FTP")
    secret = tmp_path / "pw"
    secret.write_bytes(typed)
    for command in (["add", "nulpw"], ["passwd", "ann"]):
        refused = wsfs(catalog, "user", *command, "--password-file", str(secret))
        no_traceback(refused, 1, named, "FTP")
    assert "nulpw" not in wsfs(catalog, "user", "list").stdout


def test_a_password_file_that_is_not_utf8_is_one_line(catalog, tmp_path):
    """As stdin's undecodable bytes already were."""
    secret = tmp_path / "pw"
    secret.write_bytes(b"\xff\xfe\n")
    for command in (["add", "bob"], ["passwd", "ann"]):
        refused = wsfs(catalog, "user", *command, "--password-file", str(secret))
        no_traceback(refused, 1, "UTF-8", str(secret))


def test_a_password_file_in_utf8_still_works(catalog, tmp_path):
    secret = tmp_path / "pw"
    secret.write_bytes("pässwört-1\r\n".encode())
    added = wsfs(catalog, "user", "add", "bob", "--password-file", str(secret))
    assert added.returncode == 0, added.stderr


HUGE = "99999999999999999999999999"


@pytest.mark.parametrize(
    "command",
    [
        ["user", "quota", "ann", "--bytes", HUGE],
        ["user", "quota", "ann", "--files", str(2**63)],
        ["user", "add", "bob", "--quota-bytes", HUGE],
        ["rebalance", "--max-bytes", HUGE],
        ["compact", "--max-files", HUGE],
    ],
)
def test_a_number_past_64_bits_is_refused_up_front(catalog, command):
    """Not an OverflowError (SQLite) or "bigint out of range" (PostgreSQL)."""
    no_traceback(wsfs(catalog, *command, stdin="pw-123456\n"), 2, "largest allowed")


def test_the_largest_64_bit_quota_is_taken(catalog):
    done = wsfs(catalog, "--json", "user", "quota", "ann", "--bytes", str(2**63 - 1))
    assert done.returncode == 0, done.stderr
