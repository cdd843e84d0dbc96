"""Deterministic cost of the FTP data path in wslocal: cProfile calls and
syscalls per MiB (one big RETR) or per file (many small RETR/STOR).

    python bench/ftp_profile.py retr --size-mib 256          # cProfile of wslocal
    python bench/ftp_profile.py small --files 300 --strace   # syscalls per file
    python bench/ftp_profile.py idle --clients 100           # RSS per slow download
    python bench/ftp_profile.py phases --files 300           # where a small STOR's time goes
    python bench/ftp_profile.py timeline --files 300         # the server's side of it, step by step

``phases`` times each step of small STORs over one control connection as
the client sees it (PASV and the data connection, STOR until 150, the
bytes, their close until 226: medians and p90) and prints the server's
user and system CPU per STOR, unprofiled; these are timings, noisy on a
busy machine: compare runs made side by side.
``timeline`` runs the same STORs with a hook in wslocal that stamps
(``perf_counter_ns``) the entry and exit of the functions a small STOR
crosses, in whichever thread runs them: the FTP command, the catalog's
start and commit (and the SQL ``COMMIT`` in its writer thread), the
data connection's close, each replica's put thread, its journal append
and fdatasync, the hand-back to the reactor, the replies; and prints
the medians of the steps between them (``TIMELINE_STEPS``).  Where
``phases`` sees "close -> 226" as one number, this splits it: the two
puts' Python runs one after the other under the GIL, then each flushes,
then the catalog commits.  The hook costs a few microseconds a stamp.
``retr``/``small`` run wslocal under twistd's cProfile (``--strace``: under
``strace -c -f`` instead) and print function calls per MiB or per file and
the top functions by cumulative time.  ``idle`` opens N downloads whose
clients read nothing, so each stalls on backpressure, and prints the front
end's RSS growth per download (wslocal: storage servers included).
Figures are counts, not timings, so they hold on a busy machine.
"""

from __future__ import annotations

import argparse
import ftplib
import os
import pstats
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
# Run as a script, Python puts bench/ first on the path, where a module may
# shadow the standard library (bench/http.py shadows ``http``): drop it.
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != REPO / "bench"]
sys.path.insert(0, str(REPO))

from tests.support import free_port  # noqa: E402

BLOCK = 256 * 1024


def rss_kb(pid: int) -> int:
    text = Path(f"/proc/{pid}/status").read_text()
    return int(re.search(r"VmRSS:\s+(\d+) kB", text).group(1))


class Local:
    def __init__(
        self,
        workdir: Path,
        profile: Path | None,
        strace: Path | None,
        env: dict[str, str] | None = None,
        path: str | None = None,
    ) -> None:
        """``env``: more environment for wslocal; ``path``: a directory
        put before the repository on its PYTHONPATH (``timeline``'s hook)."""
        self.workdir = workdir
        self.port = free_port()
        data = workdir / "wsfs-data"
        argv = [sys.executable, "-c", "from twisted.scripts.twistd import run; run()",
                "--nodaemon", "--pidfile="]  # fmt: skip
        if profile is not None:
            argv += [f"--profile={profile}", "--profiler=cprofile", "--savestats"]
        argv += ["wslocal", "--data", str(data),
                 "--ftp", f"tcp:{self.port}:interface=127.0.0.1",
                 "--http", f"tcp:{free_port()}:interface=127.0.0.1"]  # fmt: skip
        if strace is not None:
            argv = ["strace", "-f", "-c", "-o", str(strace), *argv]
        env = dict(os.environ, **(env or {}))
        env["PYTHONPATH"] = str(REPO) if path is None else f"{path}{os.pathsep}{REPO}"
        self.log = open(workdir / "wslocal.log", "wb")  # noqa: SIM115 (closed in stop)
        self.proc = subprocess.Popen(
            argv, env=env, stdout=self.log, stderr=subprocess.STDOUT, cwd=workdir
        )
        # wslocal writes the demo login before it listens; waiting for both
        # also covers another process on the shared machine holding the
        # port free_port() picked (the connect would succeed too early).
        deadline = time.monotonic() + 60
        while True:
            try:
                if not (data / "demo-login.txt").exists():
                    raise OSError("no demo login yet")
                socket.create_connection(("127.0.0.1", self.port), 0.5).close()
                break
            except OSError:
                if time.monotonic() > deadline or self.proc.poll() is not None:
                    raise SystemExit((workdir / "wslocal.log").read_text()) from None
                time.sleep(0.1)
        self.user, _, self.password = (data / "demo-login.txt").read_text().strip().partition(":")

    def server_pid(self) -> int:
        if self.proc.args[0] != "strace":
            return self.proc.pid
        children = Path(f"/proc/{self.proc.pid}/task/{self.proc.pid}/children").read_text()
        return int(children.split()[0])

    def connect(self) -> ftplib.FTP:
        c = ftplib.FTP()
        c.connect("127.0.0.1", self.port, timeout=120)
        c.login(self.user, self.password)
        c.voidcmd("TYPE I")
        return c

    def stop(self) -> None:
        os.kill(self.server_pid(), signal.SIGINT)
        self.proc.wait(120)
        self.log.close()


class Generated:
    def __init__(self, size: int) -> None:
        self.left = size
        self.block = os.urandom(BLOCK)

    def read(self, n: int = BLOCK) -> bytes:
        n = min(n, self.left, BLOCK)
        self.left -= n
        return self.block[:n]


def counted(
    stats_file: Path, units: float, unit: str, top: int, base: Path | None = None, grep=None
) -> None:
    """Calls per unit; with ``base`` (a run of the same workload, smaller),
    the difference, so start-up and login drop out."""
    st = pstats.Stats(str(stats_file))
    stats = {k: v[:4] for k, v in st.stats.items()}
    if base is not None:
        for k, v in pstats.Stats(str(base)).stats.items():
            a = stats.get(k, (0, 0, 0.0, 0.0))
            stats[k] = tuple(x - y for x, y in zip(a, v[:4]))
    total = sum(v[1] for v in stats.values())
    total_tt = sum(v[2] for v in stats.values())
    print(f"function calls per {unit}: {total / units:,.1f}")
    print(f"CPU seconds per {unit} (profiled, inflated): {total_tt / units:.5f}")
    rows = []
    for (file, line, name), (_cc, nc, tt, ct) in stats.items():
        rows.append((tt, nc, ct, f"{Path(file).name}:{line}({name})"))
    rows.sort(reverse=True)
    print("by calls:", ", ".join(f"{r[3]} {r[1] / units:.1f}"
                                 for r in sorted(rows, key=lambda r: -r[1])[:top]))  # fmt: skip
    if grep:
        print(f"-- functions matching {grep!r} (not base-subtracted)")
        for func, (_cc, nc, _tt, ct, _callers) in st.stats.items():
            where = f"{Path(func[0]).name}:{func[1]}({func[2]})"
            if re.search(grep, where):
                print(
                    f"{nc / units:8.2f} calls/{unit} {ct / units * 1e6:9.1f} us cumulative  {where}"
                )
    print(f"{'tottime/' + unit:>14} {'calls/' + unit:>12} {'cum/' + unit:>12}  function")
    for tt, nc, ct, where in rows[:top]:
        print(f"{tt / units:14.6f} {nc / units:12.1f} {ct / units:12.6f}  {where}")


def _strace_counts(strace_file: Path) -> dict[str, int]:
    counts = {}
    for line in strace_file.read_text().splitlines():
        parts = line.split()
        if len(parts) >= 5 and parts[0][0].isdigit() and parts[-1] != "total":
            counts[parts[-1]] = int(parts[3])
    return counts


def syscalls(strace_file: Path, units: float, unit: str, top: int, base: Path | None) -> None:
    counts = _strace_counts(strace_file)
    if base is not None:
        for name, n in _strace_counts(base).items():
            counts[name] = counts.get(name, 0) - n
    rows = sorted(((n, name) for name, n in counts.items()), reverse=True)
    print(f"syscalls per {unit}: {sum(counts.values()) / units:,.1f}")
    for calls, name in rows[:top]:
        print(f"{calls / units:10.1f}  {name}")


def retr_big(server: Local, size: int, setup: bool, rest: int = 0) -> None:
    if setup:
        c = server.connect()
        c.storbinary("STOR big.bin", Generated(size), blocksize=BLOCK)
        c.quit()
        return
    size -= rest
    c = server.connect()
    got = 0

    def sink(chunk: bytes) -> None:
        nonlocal got
        got += len(chunk)

    t = time.perf_counter()
    c.retrbinary("RETR big.bin", sink, blocksize=BLOCK, rest=rest or None)
    dt = time.perf_counter() - t
    c.quit()
    assert got == size, got
    print(f"RETR {size >> 20} MiB: {size / dt / 1e6:.0f} MB/s (timing: noisy, profiled)")


def small(server: Local, files: int, kib: int, verb: str) -> None:
    c = server.connect()
    block = os.urandom(kib << 10)
    if verb == "setup":
        c.mkd("small")
    c.cwd("small")
    t = time.perf_counter()
    for i in range(files):
        if verb in ("setup", "STOR"):
            c.storbinary(f"STOR f{i:05d}", _Bytes(block))
        else:
            c.retrbinary(f"RETR f{i:05d}", lambda _chunk: None)
    dt = time.perf_counter() - t
    c.quit()
    if verb != "setup":
        print(f"{verb} {files} x {kib} KiB: {files / dt:.0f} files/s (noisy)")


class _Bytes:
    def __init__(self, data: bytes) -> None:
        self.data = data

    def read(self, n: int = BLOCK) -> bytes:
        out, self.data = self.data[:n], self.data[n:]
        return out


def _cpu_ticks(pid: int) -> tuple[int, int]:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return int(fields[11]), int(fields[12])  # utime, stime


def _thread_ticks(pid: int) -> dict[int, tuple[int, int]]:
    """utime and stime of each live thread of ``pid``, by thread id."""
    ticks = {}
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            fields = (task / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue  # ended meanwhile
        ticks[int(task.name)] = (int(fields[11]), int(fields[12]))
    return ticks


def _thread_names(pid: int) -> dict[int, str]:
    """Python thread names by thread id, from ``py-spy dump`` (empty
    without py-spy: every thread of a Python process is named "python")."""
    if shutil.which("py-spy") is None:
        return {}
    try:
        out = subprocess.run(
            ["py-spy", "dump", "--pid", str(pid)], capture_output=True, text=True, timeout=30
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return {}
    return {int(m[1]): m[2] for m in re.finditer(r'^Thread (\d+) \([^)]*\): "([^"]*)"', out, re.M)}


def print_thread_cpu(
    pid: int, before: dict[int, tuple[int, int]], after: dict[int, tuple[int, int]], units: int
) -> None:
    """CPU per unit of each thread between two ``_thread_ticks``, busiest
    first, with threads of the same name (a pool's) added up."""
    tick = os.sysconf("SC_CLK_TCK")
    names = _thread_names(pid)
    rows: dict[str, list[float]] = {}
    for tid, (user, system) in after.items():
        user0, system0 = before.get(tid, (0, 0))
        name = re.sub(r"-\d+$", "-N", names.get(tid, f"tid {tid}"))
        row = rows.setdefault(name, [0.0, 0.0, 0])
        row[0] += (user - user0) / tick / units * 1e3
        row[1] += (system - system0) / tick / units * 1e3
        row[2] += 1
    print("server CPU per STOR by thread (ms; threads ended meanwhile are not counted):")
    for name, (user, system, n) in sorted(rows.items(), key=lambda kv: -(kv[1][0] + kv[1][1])):
        if user + system > 0:
            label = f"{name} (x{n})" if n > 1 else name
            print(f"  {label:40} user {user:6.3f}  system {system:6.3f}")


def stor_phases(server: Local, files: int, kib: int, folder: str = "phases") -> None:
    """Small STORs by hand over one control connection, each step timed."""
    ctl = socket.create_connection(("127.0.0.1", server.port))
    ctl.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    lines = ctl.makefile("rb")

    def reply() -> str:
        line = lines.readline().decode()
        while line[3:4] == "-":
            line = lines.readline().decode()
        return line

    def command(text: str) -> str:
        ctl.sendall(text.encode() + b"\r\n")
        return reply()

    reply()
    command(f"USER {server.user}")
    command(f"PASS {server.password}")
    command("TYPE I")
    command(f"MKD {folder}")
    command(f"CWD {folder}")
    block = os.urandom(kib << 10)
    steps: dict[str, list[float]] = {
        "PASV + data connection": [], "STOR -> 150": [], "bytes + close": [],
        "close -> 226": [], "whole STOR": [],
    }  # fmt: skip
    pid = server.server_pid()
    threads0 = _thread_ticks(pid)
    cpu0, wall0 = _cpu_ticks(pid), time.perf_counter()
    for i in range(files):
        t0 = time.perf_counter()
        answer = command("PASV")
        numbers = answer[answer.index("(") + 1 : answer.index(")")].split(",")
        data = socket.create_connection(("127.0.0.1", int(numbers[4]) * 256 + int(numbers[5])))
        t1 = time.perf_counter()
        answer = command(f"STOR p{i:05d}")
        assert answer.startswith("150"), answer
        t2 = time.perf_counter()
        data.sendall(block)
        data.close()
        t3 = time.perf_counter()
        answer = reply()
        assert answer.startswith("226"), answer
        t4 = time.perf_counter()
        for name, dt in zip(steps, (t1 - t0, t2 - t1, t3 - t2, t4 - t3, t4 - t0)):
            steps[name].append(dt)
    wall = time.perf_counter() - wall0
    cpu1 = _cpu_ticks(pid)
    threads1 = _thread_ticks(pid)
    command("QUIT")
    ctl.close()
    tick = os.sysconf("SC_CLK_TCK")
    print(f"{files} STOR x {kib} KiB: {files / wall:.0f} files/s (timing: noisy)")
    for name, values in steps.items():
        values.sort()
        median, p90 = values[len(values) // 2], values[len(values) * 9 // 10]
        print(f"{name:24} median {median * 1e3:7.3f} ms   p90 {p90 * 1e3:7.3f} ms")
    user, system = ((b - a) / tick / files * 1e3 for a, b in zip(cpu0, cpu1))
    print(f"server CPU per STOR: user {user:.2f} ms, system {system:.2f} ms")
    print_thread_cpu(pid, threads0, threads1, files)


#: wslocal's ``sitecustomize`` for ``timeline``: wraps each function named
#: here (module, attribute path, tag) to stamp its entry ("tag+") and exit
#: ("tag-") with the thread's id, and writes the stamps to
#: $WSFS_TIMELINE at the reactor's shutdown.  ``reply`` is stamped only for
#: the replies the steps use, under their code ("r150", "r226").
TIMELINE_HOOK = """
import os, threading, time
_STAMPS = []
_now, _tid = time.perf_counter_ns, threading.get_ident
_WRAP = [
    ("wsfront.ftp.datacmds", "store", "stor"),
    ("wsfront.catalog.catalog", "SqlCatalog.start_upload", "start"),
    ("wsfront.catalog.catalog", "SqlCatalog.commit_upload", "commit"),
    ("wsfront.catalog.sqlite", "SQLiteBackend.commit", "sql"),
    ("wsfront.ftp.data", "DataChannel.connectionLost", "close"),
    ("wsstorage.inprocess", "seal_put", "put"),
    ("wsstorage.fsops", "OsFileSystem.pwrite_all", "append"),
    ("wsstorage.fsops", "OsFileSystem.fdatasync", "sync"),
    ("wsstorage.threadwork", "HandBack._run", "back"),
]


def _wrap(owner, name, tag):
    inner = getattr(owner, name)

    def stamped(*args, **kwargs):
        _STAMPS.append((_now(), tag + "+", _tid()))
        try:
            return inner(*args, **kwargs)
        finally:
            _STAMPS.append((_now(), tag + "-", _tid()))

    setattr(owner, name, stamped)


def _install():
    import importlib

    for module, path, tag in _WRAP:
        owner = importlib.import_module(module)
        *outer, name = path.split(".")
        for part in outer:
            owner = getattr(owner, part)
        _wrap(owner, name, tag)
    from wsfront.ftp.protocol import FTPControl

    reply = FTPControl.reply

    def stamped_reply(self, code, text):
        if code in (150, 226):
            _STAMPS.append((_now(), f"r{code}", _tid()))
        return reply(self, code, text)

    FTPControl.reply = stamped_reply
    from twisted.internet import reactor

    def dump():
        with open(os.environ["WSFS_TIMELINE"], "w") as f:
            f.writelines(f"{t} {tag} {tid}\\n" for t, tag, tid in _STAMPS)

    reactor.addSystemEventTrigger("after", "shutdown", dump)


if os.environ.get("WSFS_TIMELINE"):
    _install()
"""

#: The steps ``timeline`` prints: (label, from, to), each an event of one
#: STOR (its stamps from "stor+" to "r226"): a tag, optionally "@n" for
#: its n-th stamp in the STOR (0 first, -1 last), "put:" for a stamp in a
#: put thread ("put:append+@1": the second put's append), "writer:" in a
#: thread neither the reactor's nor a put's (the catalog writer).
TIMELINE_STEPS = [
    ("STOR -> catalog start", "stor+", "start+"),
    ("catalog start (reactor)", "start+", "start-"),
    ("catalog start -> 150", "start-", "r150"),
    ("close: reactor's part", "close+", "close-"),
    ("close -> 1st put runs", "close+", "put:put+@0"),
    ("1st put: before append", "put:put+@0", "put:append+@0"),
    ("2nd put runs (from close)", "close+", "put:put+@1"),
    ("2nd put: before append", "put:put+@1", "put:append+@1"),
    ("1st put's fdatasync", "put:sync+@0", "put:sync-@0"),
    ("2nd put's fdatasync", "put:sync+@1", "put:sync-@1"),
    ("last put done -> reactor", "put:put-@-1", "back+@-1"),
    ("reactor -> catalog commit", "back+@-1", "commit+"),
    ("commit -> writer's COMMIT", "commit+", "writer:sql+@-1"),
    ("writer's COMMIT (+sync)", "writer:sql+@-1", "writer:sql-@-1"),
    ("COMMIT -> 226", "writer:sql-@-1", "r226"),
    ("close -> 226", "close+", "r226"),
    ("STOR -> 226", "stor+", "r226"),
]


def _timeline_event(stamps: list[tuple[int, str, int]], spec: str, reactor: int, puts: set[int]):
    where, _, rest = spec.rpartition(":")
    tag, _, nth = rest.partition("@")
    found = [
        t
        for t, g, tid in stamps
        if g == tag
        and (
            (where == "put" and tid in puts)
            or (where == "writer" and tid != reactor and tid not in puts)
            or (where == "" and tid == reactor)
        )
    ]
    index = int(nth) if nth else 0
    return found[index] if -len(found) <= index < len(found) else None


def timeline(stamp_file: Path) -> None:
    """Medians of TIMELINE_STEPS over every STOR in ``stamp_file``."""
    rows = []
    for line in stamp_file.read_text().splitlines():
        t, tag, tid = line.split()
        rows.append((int(t), tag, int(tid)))
    stors, current = [], None
    for row in rows:
        if row[1] == "stor+":
            current = [row]
        elif current is not None:
            current.append(row)
            if row[1] == "r226":
                stors.append(current)
                current = None
    steps: dict[str, list[float]] = {label: [] for label, _, _ in TIMELINE_STEPS}
    for stamps in stors:
        reactor = stamps[0][2]
        puts = {tid for _, tag, tid in stamps if tag == "put+"}
        for label, start, end in TIMELINE_STEPS:
            a = _timeline_event(stamps, start, reactor, puts)
            b = _timeline_event(stamps, end, reactor, puts)
            if a is not None and b is not None:
                steps[label].append((b - a) / 1e3)
    print(f"{len(stors)} STORs traced; per step, median and p90 in us (steps overlap):")
    for label, values in steps.items():
        if values:
            values.sort()
            median, p90 = values[len(values) // 2], values[len(values) * 9 // 10]
            print(f"  {label:28} {median:8.0f} {p90:8.0f}   ({len(values)} STORs)")


def idle_clients(server: Local, clients: int, mib: int) -> None:
    """``clients`` downloads of ``mib`` MiB whose clients read nothing."""
    size = mib << 20
    c = server.connect()
    c.storbinary("STOR idle.bin", Generated(size), blocksize=BLOCK)
    c.quit()
    pid = server.server_pid()
    time.sleep(1)
    before = rss_kb(pid)
    held = []
    for _ in range(clients):
        c = server.connect()
        conn = c.transfercmd("RETR idle.bin")
        conn.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        held.append((c, conn))
    time.sleep(3)
    after = rss_kb(pid)
    print(f"{clients} stalled downloads: RSS {before / 1024:.0f} -> {after / 1024:.0f} MiB, "
          f"{(after - before) / clients:.0f} KiB per download")  # fmt: skip
    for c, conn in held:
        conn.close()
        c.close()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("workload", choices=["retr", "small", "stor", "idle", "phases", "timeline"])
    p.add_argument("--size-mib", type=int, default=256)
    p.add_argument("--files", type=int, default=300)
    p.add_argument("--kib", type=int, default=4)
    p.add_argument("--clients", type=int, default=60)
    p.add_argument("--strace", action="store_true", help="syscalls (strace -c -f), not cProfile")
    p.add_argument("--top", type=int, default=25)
    p.add_argument("--grep", help="regex of functions to show calls below (cProfile only)")
    p.add_argument(
        "--base", type=int, default=0, help="also profile this many MiB/files and subtract"
    )
    p.add_argument("--dir", help="where to make the work directory (default: $TMPDIR)")
    args = p.parse_args()
    workdir = Path(tempfile.mkdtemp(prefix="wsfs-ftpprof-", dir=args.dir))
    try:
        # Set-up runs unprofiled; the measured part then runs in a fresh
        # process under the profiler on the same data.
        if args.workload == "timeline":
            hook = workdir / "timeline-hook"
            hook.mkdir()
            (hook / "sitecustomize.py").write_text(TIMELINE_HOOK)
            stamps = workdir / "timeline.txt"
            server = Local(workdir, None, None, {"WSFS_TIMELINE": str(stamps)}, str(hook))
            stor_phases(server, args.files, args.kib)
            server.stop()
            timeline(stamps)
            return
        server = Local(workdir, None, None)
        if args.workload == "phases":
            stor_phases(server, args.files, args.kib)
            server.stop()
            return
        if args.workload == "retr":
            retr_big(server, args.size_mib << 20, True)
        elif args.workload in ("small", "stor"):
            small(server, args.files, args.kib, "setup")
        elif args.workload == "idle":
            idle_clients(server, args.clients, 16)
            server.stop()
            return
        server.stop()
        verb = "RETR" if args.workload == "small" else "STOR"

        def measure(amount: int, tag: str) -> tuple[Path, Path]:
            prof = workdir / f"prof{tag}.out"
            trace = workdir / f"strace{tag}.out"
            server = Local(workdir, None if args.strace else prof, trace if args.strace else None)
            if args.workload == "retr":
                retr_big(server, args.size_mib << 20, False, (args.size_mib - amount) << 20)
            else:
                small(server, amount, args.kib, verb)
            server.stop()
            return prof, trace

        if args.workload == "retr":
            amount, unit = args.size_mib, "MiB"
        else:
            amount, unit = args.files, "file"
        prof, trace = measure(amount, "")
        base = None
        if args.base:
            base = measure(args.base, "-base")
        units = amount - args.base
        if args.strace:
            syscalls(trace, units, unit, args.top, base[1] if base else None)
        else:
            counted(prof, units, unit, args.top, base[0] if base else None, args.grep)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
