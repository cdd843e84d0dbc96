"""The twistd plugin is found from a checkout (PYTHONPATH at the repo)."""

from __future__ import annotations

import subprocess

from tests.support import TWISTD, python_env


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
