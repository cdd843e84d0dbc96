"""Whether the life recorded in a lease's holder is provably dead on this host.

A start that finds its front end's name held by another life watches that
life's lease for a full ttl before taking the name over
(``name_claim.watch_seconds``): 30 s by default after every crash, every
``kill -9``, every systemd restart of a crashed front end.  When the holder
ran on this very host (and in this very container) and its process is gone,
the watch can only end one way, so the name is taken over at once.

"This very host" must hold against containers, whose hostnames, pids and
even boot ids can repeat: a holder records the host's name, the kernel's
boot id (``/proc/sys/kernel/random/boot_id``: a reboot kills every process
and makes a new one), its pid namespace (the inode of ``/proc/self/ns/pid``:
a pid means one process within one namespace) and its time namespace (the
inode of ``/proc/self/ns/time``, 0 before Linux 5.6: the start ticks below
are read shifted by the reader's boot-time offset, so a reader in another
time namespace would see a live process's start as another's), plus its
pid and its start time in clock ticks since boot (field 22 of
``/proc/PID/stat``: a reused pid starts later).  The holder is dead iff
those four match ours exactly and no process has its pid (``kill(pid,
0)``: ESRCH), or the process with its pid started at another tick, or is a
zombie with no thread left (killed, not yet reaped: it never runs again).  Anything else (an
older wsfs's holder, a /proc that is unreadable or not of our own pid
namespace, a process hidden by ``hidepid``) proves nothing: the start
watches, as before.

The marks are appended to the holder's text, which older code only shows
(in a refusal's message, in a log line): ``host H, pid P, started T
(boot B, pid ns N, time ns T, start ticks S)``.

What it cannot tell apart: clones of one running VM's memory snapshot
(same boot id, hostname and namespaces) and a process restored by CRIU in
the same namespaces (a new task with the old pid, whose start tick differs,
judged dead while it runs).  Such clones need hostnames of their own.  A
restarted container gets a new pid namespace and is watched, as before:
the gain is for restarts on the host itself (systemd's ``Restart=``).
"""

from __future__ import annotations

import os
import re
import socket
from pathlib import Path

import attrs

PROC = Path("/proc")


@attrs.frozen
class HostIdentity:
    """Where a process runs: its pids mean one process each within it."""

    hostname: str
    boot_id: str
    pid_ns: int
    #: 0 where the kernel has no time namespaces (before Linux 5.6).
    time_ns: int


@attrs.frozen
class ProcessMark:
    """One process, told from any other: a host identity, a pid in it and
    the start tick that tells that pid's process from a later one's."""

    host: HostIdentity
    pid: int
    start_ticks: int


@attrs.frozen
class Verdict:
    """``dead``: the holder's process is provably gone; ``why`` says how,
    or why not (for the log)."""

    dead: bool
    why: str


_HOLDER = re.compile(
    r"host (?P<host>[^\s,()]+), pid (?P<pid>\d+), started (?P<started>\S+) "
    r"\(boot (?P<boot>[0-9a-f-]+), pid ns (?P<ns>\d+), time ns (?P<tns>\d+), "
    r"start ticks (?P<ticks>\d+)\)"
)
#: The kernel's largest pid (``/proc/sys/kernel/pid_max`` cannot exceed it).
PID_MAX_LIMIT = 4194304


def _stat_fields(proc: Path, pid: int | str) -> list[str]:
    """``/proc/PID/stat`` from field 3 (the state) on: the command name
    before it may hold spaces and parentheses, so split after its last ')'."""
    raw = (proc / str(pid) / "stat").read_bytes()  # a name need not be UTF-8
    return raw[raw.rindex(b")") + 2 :].decode("ascii").split()


def _start_ticks(fields: list[str]) -> int:
    return int(fields[22 - 3])


def this_host(proc: Path = PROC) -> HostIdentity | None:
    """This process's host identity, or None if it cannot be read, or if
    ``proc`` does not show the pids of our own pid namespace (a /proc of
    an outer namespace: its /proc/PID would be another process than our
    PID), so no pid can be checked there."""
    try:
        boot_id = (proc / "sys/kernel/random/boot_id").read_text().strip()
        pid_ns = os.stat(proc / "self/ns/pid").st_ino
        time_ns = _time_namespace(proc)
        status = (proc / "self/status").read_text()
    except (OSError, ValueError):
        return None
    nspid = re.search(r"^NSpid:\s*(.*)$", status, re.MULTILINE)
    if not boot_id or nspid is None or nspid.group(1).split() != [str(os.getpid())]:
        return None
    return HostIdentity(socket.gethostname(), boot_id, pid_ns, time_ns)


def _time_namespace(proc: Path) -> int:
    """The inode of our time namespace, 0 if the kernel has none."""
    try:
        return os.stat(proc / "self/ns/time").st_ino
    except FileNotFoundError:
        return 0


def this_process(proc: Path = PROC) -> ProcessMark | None:
    """This process's mark, or None if any part of it cannot be read."""
    host = this_host(proc)
    if host is None:
        return None
    try:
        ticks = _start_ticks(_stat_fields(proc, "self"))
    except (OSError, ValueError, IndexError):
        return None
    return ProcessMark(host, os.getpid(), ticks)


def holder_text(pid: int, started: str, mark: ProcessMark | None) -> str:
    """A lease's holder: who an operator reads, and the marks, if known,
    that let a start on the same host tell the process is gone."""
    if mark is None or mark.pid != pid:
        return f"host {socket.gethostname()}, pid {pid}, started {started}"
    h = mark.host
    return (
        f"host {h.hostname}, pid {pid}, started {started} "
        f"(boot {h.boot_id}, pid ns {h.pid_ns}, time ns {h.time_ns}, "
        f"start ticks {mark.start_ticks})"
    )


def parse_holder(holder: str | None) -> ProcessMark | None:
    """The marks a holder records, None if it records none (older code)."""
    m = _HOLDER.fullmatch(holder or "")
    if m is None or not 0 < int(m["pid"]) <= PID_MAX_LIMIT:
        return None
    host = HostIdentity(m["host"], m["boot"], int(m["ns"]), int(m["tns"]))
    return ProcessMark(host, int(m["pid"]), int(m["ticks"]))


def holder_verdict(holder: str | None, proc: Path = PROC) -> Verdict:
    """Whether the process that wrote ``holder`` is provably dead."""
    mark = parse_holder(holder)
    if mark is None:
        return Verdict(False, "its holder records no boot id, namespaces and start")
    ours = this_host(proc)
    if ours is None:
        return Verdict(False, "this host's boot id or pid namespace is unreadable")
    if mark.host != ours:
        return Verdict(False, "it ran on another host, boot, pid or time namespace")
    pid = mark.pid
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return Verdict(True, f"no process has pid {pid} on this host")
    except PermissionError:
        pass  # it exists, another user's
    except OSError as e:
        return Verdict(False, f"pid {pid} cannot be checked: {e}")
    try:
        fields = _stat_fields(proc, pid)
        state, ticks = fields[0], _start_ticks(fields)
    except (OSError, ValueError, IndexError) as e:
        # Died since (ENOENT), or hidden from us (hidepid): not provable.
        return Verdict(False, f"pid {pid} exists but its start is unreadable: {e}")
    if ticks != mark.start_ticks:
        return Verdict(True, f"pid {pid} is another process now (started at tick {ticks})")
    if state in ("Z", "X") and _threads(proc, pid) == [str(pid)]:
        # A leader shows Z once its own thread exits while others run on:
        # only a zombie with no thread left never runs again.
        return Verdict(True, f"pid {pid} is a zombie (killed, not yet reaped)")
    return Verdict(False, f"pid {pid} still runs")


def _threads(proc: Path, pid: int) -> list[str] | None:
    """The thread ids of ``pid``, None if they cannot be read."""
    try:
        return sorted(os.listdir(proc / str(pid) / "task"))
    except OSError:
        return None
