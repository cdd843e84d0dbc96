"""The twistd plugin is found from a checkout (PYTHONPATH at the repo)."""

from __future__ import annotations

import subprocess

import pytest
from twisted.python import usage

from tests.support import TWISTD, python_env
from wsstorage.service import Options


def test_twistd_help_lists_the_wsstorage_plugin() -> None:
    out = subprocess.run(
        [*TWISTD, "--help"], env=python_env(), capture_output=True, text=True, timeout=60
    )
    assert out.returncode == 0, out.stderr
    lines = [line.split() for line in out.stdout.splitlines()]
    assert ["wsstorage", "a", "wsfs", "storage", "server"] in lines


def test_wsstorage_help_describes_its_options() -> None:
    out = subprocess.run(
        [*TWISTD, "wsstorage", "--help"],
        env=python_env(),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 0, out.stderr
    for option in ("--listen=", "--data=", "--name=", "--secret-file="):
        assert option in out.stdout


def test_wsstorage_read_ahead_options_are_parsed_and_checked(tmp_path) -> None:
    base = ["--listen", "tcp:0", "--data", str(tmp_path / "d"), "--name", "s1"]
    base += ["--secret-file", str(tmp_path / "secret")]
    opts = Options()
    opts.parseOptions([*base, "--read-ahead-kib", "256", "--read-batches", "1"])
    assert (opts["read-ahead-kib"], opts["read-batches"]) == (256, 1)
    defaults = Options()
    defaults.parseOptions(base)
    assert (defaults["read-ahead-kib"], defaults["read-batches"]) == (1024, 2)
    for bad in (["--read-batches", "0"], ["--read-ahead-kib", "x"], ["--read-ahead-kib", "1"]):
        with pytest.raises(usage.UsageError):
            Options().parseOptions([*base, *bad])
