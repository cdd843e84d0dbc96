"""Failpoints: parsing, thresholds, and a real process killed at a point."""

import os
import signal
import subprocess
import sys

import pytest

from tests.support import python_env
from wsstorage.failpoints import FailpointError, Failpoints


def test_unset_failpoints_never_fire():
    fp = Failpoints(None)
    assert not fp.active
    fp.hit("anything", 10**9)
    assert fp.threshold("anything") is None


def test_raise_fires_once_at_its_threshold(tmp_path):
    log = tmp_path / "fp.log"
    fp = Failpoints("a.bytes=raise@100", str(log))
    assert fp.threshold("a.bytes") == 100
    fp.hit("a.bytes", 99)
    with pytest.raises(FailpointError):
        fp.hit("a.bytes", 100)
    fp.hit("a.bytes", 200)  # fired already
    assert fp.threshold("a.bytes") is None
    assert log.read_text().startswith("failpoint a.bytes fired count=100")


@pytest.mark.parametrize("spec", ["nameonly", "x=explode", "x=kill@notanumber"])
def test_bad_spec_is_rejected(spec):
    with pytest.raises(ValueError):
        Failpoints(spec)


def test_kill_action_sigkills_the_process(tmp_path):
    log = tmp_path / "fp.log"
    code = (
        "from wsstorage import failpoints\n"
        "for n in range(10):\n"
        "    failpoints.hit('loop.count', n)\n"
        "print('survived')\n"
    )
    env = python_env({"WSFS_FAILPOINTS": "loop.count=kill@3", "WSFS_FAILPOINT_LOG": str(log)})
    proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, timeout=60)
    assert proc.returncode == -signal.SIGKILL
    assert b"survived" not in proc.stdout
    assert "count=3" in log.read_text()
    assert os.path.exists(log)
