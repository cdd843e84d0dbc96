"""Whether a lease holder's process is provably dead on this host
(``wsfront.maintenance.host_life``), on the real /proc with real child
processes: dead only when its host, boot and pid namespace are ours and its
pid is gone, another process's, or a zombie's; anything unreadable or
unrecorded proves nothing (the start watches the lease, as before)."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import attrs
import pytest

from wsfront.maintenance.host_life import (
    ProcessMark,
    holder_text,
    holder_verdict,
    parse_holder,
    this_host,
    this_process,
)

STARTED = "2026-01-01T00:00:00Z"


def _holder(mark: ProcessMark) -> str:
    return holder_text(mark.pid, STARTED, mark)


def _ticks(pid: int) -> int:
    text = Path(f"/proc/{pid}/stat").read_text()
    return int(text[text.rindex(")") + 2 :].split()[19])


@pytest.fixture
def me() -> ProcessMark:
    if "NSpid:" not in Path("/proc/self/status").read_text():
        pytest.skip("this kernel's /proc/PID/status has no NSpid line (Linux < 4.1)")
    mark = this_process()
    assert mark is not None, "this test host's /proc gives no process mark"
    return mark


@pytest.fixture
def child(me) -> Iterator[tuple[subprocess.Popen, ProcessMark]]:
    """A live child process (it waits on its stdin) and its mark."""
    proc = subprocess.Popen([sys.executable, "-c", "import sys; sys.stdin.read()"],
                            stdin=subprocess.PIPE)  # fmt: skip
    try:
        yield proc, ProcessMark(me.host, proc.pid, _ticks(proc.pid))
    finally:
        proc.kill()
        proc.wait()


def test_our_own_process_is_alive_and_its_holder_reads_back(me):
    holder = _holder(me)
    assert holder.startswith(f"host {me.host.hostname}, pid {os.getpid()}, started {STARTED} (")
    assert parse_holder(holder) == me
    verdict = holder_verdict(holder)
    assert not verdict.dead and "still runs" in verdict.why


def test_a_child_started_and_reaped_is_dead(child):
    proc, mark = child
    assert not holder_verdict(_holder(mark)).dead  # alive: not dead
    proc.stdin.close()
    assert proc.wait(timeout=60) == 0
    verdict = holder_verdict(_holder(mark))
    # Its pid is free, or (reused since) another process's.
    assert verdict.dead, verdict.why


def test_a_killed_child_not_yet_reaped_is_dead(child):
    """A zombie (its parent has not reaped it yet) still has its pid and
    start, but never runs again."""
    proc, mark = child
    proc.send_signal(signal.SIGKILL)
    os.waitid(os.P_PID, proc.pid, os.WEXITED | os.WNOWAIT)  # exited, not reaped
    verdict = holder_verdict(_holder(mark))
    assert verdict.dead and "zombie" in verdict.why, verdict.why


def test_our_pid_with_another_start_is_dead(me):
    """A holder's pid reused by a later process (here: us)."""
    verdict = holder_verdict(_holder(attrs.evolve(me, start_ticks=me.start_ticks - 1)))
    assert verdict.dead and "another process" in verdict.why, verdict.why


@pytest.mark.parametrize(
    "other",
    [{"hostname": "elsewhere"}, {"boot_id": "0" * 36}, {"pid_ns": 1}, {"time_ns": 1}],
    ids=["hostname", "boot id", "pid namespace", "time namespace"],
)  # fmt: skip
def test_a_dead_pid_of_another_host_boot_or_container_proves_nothing(child, other):
    proc, mark = child
    proc.stdin.close()
    proc.wait(timeout=60)
    elsewhere = attrs.evolve(mark, host=attrs.evolve(mark.host, **other))
    assert holder_verdict(_holder(mark)).dead
    verdict = holder_verdict(_holder(elsewhere))
    assert not verdict.dead and "another host" in verdict.why, verdict.why


@pytest.mark.parametrize(
    "holder",
    [None, "", "host vm, pid 1, started then", f"host vm, pid 1, started {STARTED}",
     f"host vm, pid x, started {STARTED} (boot b, pid ns 1, start ticks 5)",
     f"host vm, pid 1, started {STARTED} (boot b, pid ns 1, start ticks 5)",
     f"host vm, pid 99999999999, started {STARTED} (boot b, pid ns 1, time ns 2, start ticks 5)",
     f"host vm, pid 0, started {STARTED} (boot b, pid ns 1, time ns 2, start ticks 5)"],
)  # fmt: skip
def test_a_holder_of_older_code_or_unparsable_proves_nothing(holder):
    assert parse_holder(holder) is None
    verdict = holder_verdict(holder)
    assert not verdict.dead and "records no" in verdict.why


def _fake_proc(tmp_path: Path, nspid: str) -> Path:
    """A /proc with our boot id and pid namespace but ``nspid`` in our
    status, and no /proc/PID at all."""
    proc = tmp_path / "proc"
    (proc / "sys/kernel/random").mkdir(parents=True)
    shutil.copy("/proc/sys/kernel/random/boot_id", proc / "sys/kernel/random/boot_id")
    (proc / "self/ns").mkdir(parents=True)
    (proc / "self/ns/pid").symlink_to("/proc/self/ns/pid")
    (proc / "self/ns/time").symlink_to("/proc/self/ns/time")
    (proc / "self/status").write_text(f"Name:\tpython\nNSpid:\t{nspid}\n")
    return proc


def test_a_dead_holder_proves_nothing_where_proc_is_unreadable(child, tmp_path):
    proc, mark = child
    proc.stdin.close()
    proc.wait(timeout=60)
    holder = _holder(mark)
    assert holder_verdict(holder).dead
    verdict = holder_verdict(holder, proc=tmp_path)  # no /proc at all
    assert not verdict.dead and "unreadable" in verdict.why
    # A /proc of an outer pid namespace (our pid there is another): its
    # /proc/PID are not our namespace's processes.
    outer = _fake_proc(tmp_path, f"{os.getpid() + 7}\t{os.getpid()}")
    assert this_host(outer) is None
    assert not holder_verdict(holder, proc=outer).dead


def test_a_live_holder_whose_start_is_unreadable_is_not_dead(child, tmp_path):
    """hidepid hides another user's /proc/PID though it runs: no /proc/PID
    but a live pid is not taken for dead."""
    _, mark = child
    hidden = _fake_proc(tmp_path, str(os.getpid()))
    assert this_host(hidden) == mark.host
    verdict = holder_verdict(_holder(mark), proc=hidden)
    assert not verdict.dead and "unreadable" in verdict.why, verdict.why


def test_a_live_holder_is_alive_to_a_reader_in_another_time_namespace(me):
    """Start ticks in /proc/PID/stat are shifted by the reader's boot-time
    offset: read from a time namespace with one (``unshare --time``), a
    live process's start looked like another process's, and its name was
    taken from it at once.  The time namespace is part of the host
    identity, so such a reader proves nothing and watches."""
    unshare = shutil.which("unshare")
    if unshare is None:
        pytest.skip("util-linux's unshare is not installed")
    code = (
        "import sys; from wsfront.maintenance.host_life import holder_verdict; "
        "v = holder_verdict(sys.argv[1]); print(v.dead, v.why)"
    )
    done = subprocess.run(
        [unshare, "--time", "--boottime", "1000", "--fork",
         sys.executable, "-c", code, _holder(me)],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    if done.returncode != 0 and "Operation not permitted" in done.stderr:
        pytest.skip(f"no time namespace may be made here: {done.stderr.strip()}")
    assert done.returncode == 0, done.stderr
    dead, _, why = done.stdout.strip().partition(" ")
    assert dead == "False" and "time namespace" in why, done.stdout
