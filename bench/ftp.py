"""FTP benchmark: wsfs (``twistd -n wslocal``) against pyftpdlib in the same run.

Workloads (issue 5): single-stream STOR and RETR of one large file, N
clients at once each fetching a file, many small files over one control
connection (with the server's CPU per file: all of it, and its main
thread's, wsfs's reactor).  pyftpdlib serves the same files from a plain
directory with sendfile off, so the ratios compare like with like on
this machine.

    python bench/ftp.py                 # the issue's sizes (1 GiB, 200 x 10 MiB, 1000 x 4 KiB)
    python bench/ftp.py --quick         # small sizes, a smoke run
    python bench/ftp.py --layout procs --workloads clients --rounds 3
    python bench/ftp.py --layout procs --storage-sockets tcp   # storage as if on other hosts

Two wsfs layouts: ``procs`` runs three ``twistd -n wsstorage`` processes and
one ``twistd -n wsfront`` alone (so its peak RSS is the front end's own),
``wslocal`` the whole cluster in one process.  Prints MB/s, files/s, p99
per-client time, failed clients, the server's CPU seconds per GiB moved
(every wsfs process, storage servers included: a count that a busy machine
disturbs less than MB/s), the server's peak RSS (VmHWM: the wsfront
process for ``procs``; front end *and* storage servers for wslocal) and its
RSS at idle before the first workload (the import baseline), replica count
and fsync policy, and the ratios against pyftpdlib (medians of alternating
rounds).
"""

from __future__ import annotations

import argparse
import base64
import ftplib
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
# Run as a script, Python puts bench/ first on the path, where a module may
# shadow the standard library (bench/http.py shadows ``http``): drop it.
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != REPO / "bench"]
sys.path.insert(0, str(REPO))

from tests.support import free_port  # noqa: E402

BLOCK = 256 * 1024
MB = 1e6


def wait_port(
    port: int, proc: subprocess.Popen, timeout: float = 60.0, after: Path | None = None
) -> None:
    """Wait until something listens on ``port`` (and, with ``after``, that
    file exists: a server that writes it before it listens is only then
    known to be the listener, not another process on this shared machine
    that holds the port ``free_port`` picked)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"server exited with {proc.returncode}")
        try:
            if after is not None and not after.exists():
                raise OSError(f"no {after.name} yet")
            with socket.create_connection(("127.0.0.1", port), 0.5):
                return
        except OSError:
            time.sleep(0.1)
    raise SystemExit(f"nothing listens on {port}")


def wait_socket(path: Path, proc: subprocess.Popen, timeout: float = 60.0) -> None:
    """Wait until a UNIX socket at ``path`` accepts a connection."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"server exited with {proc.returncode}")
        try:
            with socket.socket(socket.AF_UNIX) as s:
                s.connect(str(path))
                return
        except OSError:
            time.sleep(0.1)
    raise SystemExit(f"nothing listens on {path}")


def peak_rss_mb(pid: int) -> float:
    text = Path(f"/proc/{pid}/status").read_text()
    return int(re.search(r"VmHWM:\s+(\d+) kB", text).group(1)) / 1024


class Server:
    name = ""
    replicas = ""
    fsync = ""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.port = free_port()
        self.proc: subprocess.Popen | None = None
        self.user = self.password = ""

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()


class Wsfs(Server):
    name = "wsfs"

    def __init__(self, workdir: Path, replicas: int, nodes: int) -> None:
        super().__init__(workdir)
        self.replicas = str(replicas)
        self.nodes = nodes
        self.fsync = "fsync at checkpoints (8 MiB / 2 s) and before 226"

    def start(self) -> None:
        data = self.workdir / "wsfs-data"
        env = dict(os.environ, PYTHONPATH=str(REPO))
        argv = [sys.executable, "-c", "from twisted.scripts.twistd import run; run()",
                "--nodaemon", "--pidfile=", "wslocal",
                "--data", str(data), "--ftp", f"tcp:{self.port}:interface=127.0.0.1",
                "--http", f"tcp:{free_port()}:interface=127.0.0.1",
                "--nodes", str(self.nodes), "--replicas", self.replicas]  # fmt: skip
        with open(self.workdir / "wslocal.log", "wb") as log:
            self.proc = subprocess.Popen(
                argv, env=env, stdout=log, stderr=subprocess.STDOUT, cwd=self.workdir
            )
        # wslocal writes its login before it listens.
        wait_port(self.port, self.proc, after=data / "demo-login.txt")
        login = (data / "demo-login.txt").read_text().strip()
        self.user, _, self.password = login.partition(":")


class WsfsProcs(Server):
    """The multi-process layout: three ``twistd -n wsstorage`` processes and
    one ``twistd -n wsfront`` alone, on a SQLite catalog, so the peak RSS
    measured is the front end's own."""

    name = "wsfs-procs"

    #: How the front end reaches the storage servers: "unix" (UNIX sockets,
    #: what a front end on the same host uses, as wslocal does and as
    #: bench/http.py's procs layout does by default) or "tcp" (127.0.0.1,
    #: the layout before, standing in for servers on hosts of their own).
    sockets = "unix"

    def __init__(self, workdir: Path, replicas: int, nodes: int) -> None:
        super().__init__(workdir)
        self.replicas = str(replicas)
        self.nodes = nodes
        self.fsync = "fsync at checkpoints (8 MiB / 2 s) and before 226"
        self.storage: list[subprocess.Popen] = []

    def _endpoints(self, base: Path, name: str) -> tuple[str, str, int | Path]:
        """A storage server's listening and client endpoint, and the port or
        socket path to wait for (TCP when a UNIX path would be too long)."""
        sock = base / f"{name}.sock"
        if self.sockets == "unix" and len(os.fsencode(sock)) <= 103:
            return f"unix:address={sock}:mode=600:lockfile=0", f"unix:path={sock}", sock
        if self.sockets == "unix":
            print(f"{sock}: too long a path for a UNIX socket: {name} on TCP", file=sys.stderr)
        port = free_port()
        return f"tcp:{port}:interface=127.0.0.1", f"tcp:127.0.0.1:{port}", port

    def start(self) -> None:
        base = self.workdir / "procs"
        base.mkdir()
        secret = base / "secret"
        secret.write_text(base64.b64encode(os.urandom(32)).decode() + "\n")
        env = dict(os.environ, PYTHONPATH=str(REPO))
        twistd = [sys.executable, "-c", "from twisted.scripts.twistd import run; run()",
                  "--nodaemon", "--pidfile="]  # fmt: skip
        specs = []
        for i in range(1, self.nodes + 1):
            name = f"s{i}"
            listen, connect, where = self._endpoints(base, name)
            with open(base / f"{name}.log", "wb") as log:
                proc = subprocess.Popen(
                    [*twistd, "wsstorage", "--listen", listen,
                     "--data", str(base / name), "--name", name, "--secret-file", str(secret)],
                    env=env, stdout=log, stderr=subprocess.STDOUT, cwd=base,
                )  # fmt: skip
            self.storage.append(proc)
            if isinstance(where, Path):
                wait_socket(where, proc)
            else:
                wait_port(where, proc)
            specs += ["--storage", f"{name}={connect}"]
        catalog = f"sqlite:///{base / 'catalog.sqlite'}"
        self.user, self.password = "bench", "bench-password"
        subprocess.run(
            [sys.executable, "-c", "from wsfront.cli import main; main()",
             "--catalog", catalog, "user", "add", self.user],
            input=self.password.encode(), env=env, check=True, stdout=subprocess.DEVNULL,
        )  # fmt: skip
        argv = [*twistd, "wsfront", "--name", "fe1", "--catalog", catalog, *specs,
                "--ftp", f"tcp:{self.port}:interface=127.0.0.1",
                "--replicas", self.replicas, "--secret-file", str(secret),
                "--max-connections-per-address", "4096",
                "--max-sessions-per-user", "4096"]  # fmt: skip
        with open(base / "wsfront.log", "wb") as log:
            self.proc = subprocess.Popen(
                argv, env=env, stdout=log, stderr=subprocess.STDOUT, cwd=base
            )
        wait_port(self.port, self.proc)

    def stop(self) -> None:
        super().stop()
        for proc in self.storage:
            if proc.poll() is None:
                proc.terminate()
                try:
                    proc.wait(20)
                except subprocess.TimeoutExpired:
                    proc.kill()


class Pyftpdlib(Server):
    name = "pyftpdlib"
    replicas = "1 (local disk)"
    fsync = "none"
    # Lines run before the server starts, with ``FTPHandler`` imported.
    setup = ""

    def start(self) -> None:
        root = self.workdir / "pyftpd-root"
        root.mkdir(exist_ok=True)
        self.user, self.password = "bench", "bench-password"
        script = f"""
from pyftpdlib.authorizers import DummyAuthorizer
from pyftpdlib.handlers import FTPHandler
from pyftpdlib.servers import FTPServer
{self.setup}
a = DummyAuthorizer()
a.add_user({self.user!r}, {self.password!r}, {str(root)!r}, perm="elradfmwMT")
FTPHandler.authorizer = a
FTPHandler.use_sendfile = False
FTPHandler.banner = "bench"
s = FTPServer(("127.0.0.1", {self.port}), FTPHandler)
s.max_cons = 1024
s.serve_forever()
"""
        with open(self.workdir / "pyftpdlib.log", "wb") as log:
            self.proc = subprocess.Popen([sys.executable, "-c", script], stdout=log, stderr=log)
        wait_port(self.port, self.proc)


class PyftpdlibFsync(Pyftpdlib):
    """pyftpdlib made durable the least a one-copy server can be: a stored
    file is fsync'd, and so is its directory, before the 226 (pyftpdlib
    closes the file before it replies).  Not the issue's reference, which
    never syncs: a gauge of how much of wsfs's gap on small STORs is the
    durability every wsfs 226 promises (two replicas and a catalog commit,
    each synced, against this one file)."""

    name = "pyftpdlib+fsync"
    fsync = "fsync of file and directory before 226"
    setup = """
import io, os
from pyftpdlib.filesystems import AbstractedFS

class _DurableFile(io.BufferedWriter):
    def close(self):
        if not self.closed:
            self.flush()
            os.fsync(self.fileno())
            super().close()
            d = os.open(os.path.dirname(self.name), os.O_RDONLY)
            try:
                os.fsync(d)
            finally:
                os.close(d)

class _DurableFS(AbstractedFS):
    def open(self, filename, mode):
        if mode == "wb":
            return _DurableFile(io.FileIO(filename, "w"))
        return super().open(filename, mode)

FTPHandler.abstracted_fs = _DurableFS
"""


class PyftpdlibReplicated(Pyftpdlib):
    """The least any server that keeps wsfs's promise must do per STOR, on
    pyftpdlib: DESIGN.md acknowledges a file only once every replica has
    fsync'd it and the catalog commit is durable.  So before the 226 this
    server writes a second copy beside the first (in another thread, at the
    same time, as wsfs's two replicas are written), fsyncs both files and
    both directories, then appends a small record to a log and fdatasyncs
    it (the catalog commit); when a STOR starts it appends a record
    unsynced (the catalog's start of the upload).  No checksums, no
    network hop to a storage server, no session bookkeeping: wsfs's ratio
    against this is its own overhead, and this server's ratio against
    plain pyftpdlib is the ceiling the durability rule leaves on this
    machine's disk for any implementation."""

    name = "pyftpdlib+2copies+log"
    replicas = "2 (local disk)"
    fsync = "2 files, 2 dirs, a log record before 226"
    setup = """
import io, os, threading
from pyftpdlib.filesystems import AbstractedFS

_LOG = None
_RECORD = b"r" * 255 + b"\\n"

def _log(sync, root):
    global _LOG
    if _LOG is None:
        path = os.path.join(os.path.dirname(root), "catalog.log")
        _LOG = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    os.write(_LOG, _RECORD)
    if sync:
        os.fdatasync(_LOG)

def _fsync_dir(path):
    d = os.open(path, os.O_RDONLY)
    try:
        os.fsync(d)
    finally:
        os.close(d)

def _second_copy(src, dst):
    os.makedirs(os.path.dirname(dst), exist_ok=True)
    fin = os.open(src, os.O_RDONLY)
    fout = os.open(dst, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        while True:
            block = os.read(fin, 1 << 20)
            if not block:
                break
            os.write(fout, block)
        os.fsync(fout)
    finally:
        os.close(fin)
        os.close(fout)
    _fsync_dir(os.path.dirname(dst))

class _ReplicatedFile(io.BufferedWriter):
    def close(self):
        if not self.closed:
            self.flush()
            name = os.path.abspath(self.name)
            copy = threading.Thread(
                target=_second_copy, args=(name, name.replace("/pyftpd-root/", "/pyftpd-copy/", 1))
            )
            copy.start()
            os.fsync(self.fileno())
            super().close()
            _fsync_dir(os.path.dirname(name))
            copy.join()
            _log(True, name.split("/pyftpd-root/")[0] + "/pyftpd-root")

class _ReplicatedFS(AbstractedFS):
    def open(self, filename, mode):
        if mode == "wb":
            _log(False, self.root)
            return _ReplicatedFile(io.FileIO(filename, "w"))
        return super().open(filename, mode)

FTPHandler.abstracted_fs = _ReplicatedFS
"""


class PyftpdlibLogged(Pyftpdlib):
    """What the durability rule would cost with small blobs appended to a
    preallocated log per replica instead of a file each (the structural
    change left open for small STORs): before the 226 the stored bytes are
    written into two logs of zeros made at start (so a write changes no
    file-system metadata) and both fdatasync'd at once, then a record goes
    into a catalog log, fdatasync'd.  A gauge for that design's ceiling,
    like ``PyftpdlibReplicated`` for today's one."""

    name = "pyftpdlib+2logs+log"
    replicas = "2 logs (local disk)"
    fsync = "2 preallocated logs, a log record before 226"
    setup = """
import io, os, threading
from pyftpdlib.filesystems import AbstractedFS

_LOG_BYTES = 128 << 20
_DIR = os.environ["WSFS_BENCH_LOG_DIR"]

def _make_log(name, size):
    # Made before the server listens: zeros written and synced, so each
    # later write overwrites allocated blocks (no metadata to commit).
    path = os.path.join(_DIR, name)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    block = bytes(1 << 20)
    for off in range(0, size, len(block)):
        os.pwrite(fd, block, off)
    os.fsync(fd)
    return [fd, 0]

_A = _make_log("replica-a.log", _LOG_BYTES)
_B = _make_log("replica-b.log", _LOG_BYTES)
_CATALOG = _make_log("catalog.log", 1 << 20)
_d = os.open(_DIR, os.O_RDONLY)
os.fsync(_d)
os.close(_d)

def _append(entry, data, size=_LOG_BYTES):
    fd, at = entry
    if at + len(data) > size:
        at = 0  # a gauge, not a store: wrap around
    os.pwrite(fd, data, at)
    os.fdatasync(fd)
    entry[1] = at + len(data)

class _LoggedFile(io.BufferedWriter):
    def close(self):
        if not self.closed:
            self.flush()
            name = os.path.abspath(self.name)
            super().close()
            with open(name, "rb") as f:
                data = f.read()  # small files: the gauge's workload
            other = threading.Thread(target=_append, args=(_B, data))
            other.start()
            _append(_A, data)
            other.join()
            _append(_CATALOG, b"r" * 256, 1 << 20)

class _LoggedFS(AbstractedFS):
    def open(self, filename, mode):
        if mode == "wb":
            return _LoggedFile(io.FileIO(filename, "w"))
        return super().open(filename, mode)

FTPHandler.abstracted_fs = _LoggedFS
"""

    def start(self) -> None:
        os.environ["WSFS_BENCH_LOG_DIR"] = str(self.workdir)
        try:
            super().start()
        finally:
            del os.environ["WSFS_BENCH_LOG_DIR"]


DURABLE_REFERENCES = (PyftpdlibFsync, PyftpdlibReplicated, PyftpdlibLogged)


def connect(server: Server) -> ftplib.FTP:
    c = ftplib.FTP()
    c.connect("127.0.0.1", server.port, timeout=120)
    c.login(server.user, server.password)
    c.voidcmd("TYPE I")
    return c


class Generated:
    """A file-like object of ``size`` pseudo-random bytes, never all in memory."""

    def __init__(self, size: int) -> None:
        self.left = size
        self.block = os.urandom(BLOCK)

    def read(self, n: int = BLOCK) -> bytes:
        n = min(n, self.left, BLOCK)
        self.left -= n
        return self.block[:n]


def stor(server: Server, name: str, size: int) -> float:
    c = connect(server)
    t = time.perf_counter()
    c.storbinary(f"STOR {name}", Generated(size), blocksize=BLOCK)
    dt = time.perf_counter() - t
    c.quit()
    return dt


def retr(server: Server, name: str, expect: int) -> float:
    c = connect(server)
    got = 0

    def sink(chunk: bytes) -> None:
        nonlocal got
        got += len(chunk)

    t = time.perf_counter()
    c.retrbinary(f"RETR {name}", sink, blocksize=BLOCK)
    dt = time.perf_counter() - t
    c.quit()
    if got != expect:
        raise RuntimeError(f"got {got} bytes of {expect}")
    return dt


def many_clients(server: Server, clients: int, size: int) -> dict:
    stor(server, "shared.bin", size)

    def one(_):
        try:
            t = time.perf_counter()
            retr(server, "shared.bin", size)
            return time.perf_counter() - t
        except Exception as e:
            return e

    t = time.perf_counter()
    with ThreadPoolExecutor(clients) as pool:
        results = list(pool.map(one, range(clients)))
    wall = time.perf_counter() - t
    times = sorted(r for r in results if isinstance(r, float))
    failed = len(results) - len(times)
    p99 = times[min(len(times) - 1, int(len(times) * 0.99))] if times else float("nan")
    return {"MB/s": len(times) * size / MB / wall, "p99 s": p99, "failed": failed}


def small_files(server: Server, count: int, size: int) -> dict:
    """Files/s, and the server's CPU per file: all of it (every thread and
    process, see cpu_seconds) and its main thread's alone (wsfs's reactor,
    where the GIL is most contended; pyftpdlib has no other)."""
    c = connect(server)
    c.mkd("small")
    c.cwd("small")
    block = os.urandom(size)
    cpu, main = cpu_seconds(server), main_thread_cpu_seconds(server)
    t = time.perf_counter()
    for i in range(count):
        c.storbinary(f"STOR f{i:05d}", _Bytes(block))
    up = count / (time.perf_counter() - t)
    stor_cpu = (cpu_seconds(server) - cpu) / count * 1000
    stor_main = (main_thread_cpu_seconds(server) - main) / count * 1000
    cpu, main = cpu_seconds(server), main_thread_cpu_seconds(server)
    t = time.perf_counter()
    for i in range(count):
        c.retrbinary(f"RETR f{i:05d}", lambda _chunk: None)
    down = count / (time.perf_counter() - t)
    retr_cpu = (cpu_seconds(server) - cpu) / count * 1000
    retr_main = (main_thread_cpu_seconds(server) - main) / count * 1000
    c.quit()
    return {
        "STOR files/s": up,
        "STOR CPU ms/file": stor_cpu,
        "STOR main-thread CPU ms/file": stor_main,
        "RETR files/s": down,
        "RETR CPU ms/file": retr_cpu,
        "RETR main-thread CPU ms/file": retr_main,
    }


class _Bytes:
    def __init__(self, data: bytes) -> None:
        self.data = data

    def read(self, n: int = BLOCK) -> bytes:
        out, self.data = self.data[:n], self.data[n:]
        return out


def rss_mb(pid: int) -> float:
    """A process's current RSS (VmRSS): at start, the import baseline."""
    text = Path(f"/proc/{pid}/status").read_text()
    return int(re.search(r"VmRSS:\s+(\d+) kB", text).group(1)) / 1024


def cpu_seconds(server: Server) -> float:
    """User plus system CPU the server has used so far: the wsfs processes
    (front end and storage servers) or pyftpdlib's, not the clients'."""
    ticks = 0
    for proc in [server.proc, *getattr(server, "storage", [])]:
        fields = Path(f"/proc/{proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
        ticks += int(fields[11]) + int(fields[12])  # utime, stime
    return ticks / os.sysconf("SC_CLK_TCK")


def main_thread_cpu_seconds(server: Server) -> float:
    """User plus system CPU of the server process's main thread: wsfs's
    reactor thread (for ``procs``, the front end's), pyftpdlib's only one."""
    pid = server.proc.pid
    fields = Path(f"/proc/{pid}/task/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def reset_peak_rss(pid: int) -> bool:
    """Reset a process's VmHWM to its current RSS (Linux clear_refs 5)."""
    try:
        Path(f"/proc/{pid}/clear_refs").write_text("5")
    except OSError:
        return False
    return True


def run(server: Server, args) -> dict:
    big = args.size_mib << 20
    wanted = set(args.workloads.split(","))
    pid = server.proc.pid
    out: dict = {}
    peaks: dict = {}

    def phase_peak(name: str) -> None:
        peaks[f"peak RSS MB: {name}"] = peak_rss_mb(pid)
        reset_peak_rss(pid)

    idle = rss_mb(pid)
    overall = peak_rss_mb(pid)
    reset_peak_rss(pid)
    if "big" in wanted:
        cpu = cpu_seconds(server)
        out["STOR MB/s"] = big / MB / stor(server, "big.bin", big)
        out["STOR CPU s/GiB"] = (cpu_seconds(server) - cpu) / (big / (1 << 30))
        phase_peak("STOR")
        cpu = cpu_seconds(server)
        out["RETR MB/s"] = big / MB / retr(server, "big.bin", big)
        out["RETR CPU s/GiB"] = (cpu_seconds(server) - cpu) / (big / (1 << 30))
        phase_peak("RETR")
    if "clients" in wanted:
        cpu = cpu_seconds(server)
        many = many_clients(server, args.clients, args.client_mib << 20)
        # Per GiB sent (the STOR of the shared file included, once): a
        # count, which the load from other processes affects less than MB/s.
        moved = (args.clients + 1) * (args.client_mib << 20) / (1 << 30)
        out[f"{args.clients} clients CPU s/GiB"] = (cpu_seconds(server) - cpu) / moved
        out[f"{args.clients} clients MB/s"] = many["MB/s"]
        out[f"{args.clients} clients p99 s"] = many["p99 s"]
        out[f"{args.clients} clients failed"] = many["failed"]
        phase_peak(f"{args.clients} clients")
    if "small" in wanted:
        out.update(small_files(server, args.small, args.small_kib << 10))
        phase_peak("small files")
    out["peak RSS MB"] = max([overall, *peaks.values()])
    out.update(peaks)
    out["idle RSS MB"] = idle
    out["replicas"] = server.replicas
    out["fsync"] = server.fsync
    return out


def median(values: list):
    values = sorted(values)
    if not values:
        return float("nan")
    mid = len(values) // 2
    return values[mid] if len(values) % 2 else (values[mid - 1] + values[mid]) / 2


def loadavg() -> str:
    return " ".join(Path("/proc/loadavg").read_text().split()[:3])


def create_cost_ms(where: Path, count: int = 200) -> float:
    """Mean wall time to create (and close) an empty file in ``where``: the
    small-file workload creates one file per STOR on pyftpdlib and two per
    replica on wsfs, so this machine state weighs on its ratio."""
    probe = where / "create-probe"
    probe.mkdir()
    start = time.perf_counter()
    for i in range(count):
        os.close(os.open(probe / str(i), os.O_CREAT | os.O_WRONLY, 0o600))
    took = time.perf_counter() - start
    shutil.rmtree(probe, ignore_errors=True)
    return took / count * 1000


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--size-mib", type=int, default=1024)
    p.add_argument("--clients", type=int, default=200)
    p.add_argument("--client-mib", type=int, default=10)
    p.add_argument("--small", type=int, default=1000)
    p.add_argument("--small-kib", type=int, default=4)
    p.add_argument("--replicas", type=int, default=2)
    p.add_argument("--nodes", type=int, default=3)
    p.add_argument(
        "--layout",
        default="procs,wslocal",
        help="wsfs layouts to run, comma-separated: procs (storage servers and the "
        "front end as separate processes), wslocal (one process)",
    )
    p.add_argument("--workloads", default="big,clients,small", help="subset of big,clients,small")
    p.add_argument(
        "--storage-sockets",
        choices=("unix", "tcp"),
        default="unix",
        help="how the procs layout's front end reaches its storage servers: UNIX sockets "
        "(the default, as a front end on the same host does, and as bench/http.py's) or "
        "TCP on 127.0.0.1 (standing in for storage servers on hosts of their own)",
    )
    p.add_argument("--rounds", type=int, default=1, help="alternating rounds (medians shown)")
    p.add_argument(
        "--durable-reference",
        action="store_true",
        help="also run three durable pyftpdlib references (an fsync of each stored file "
        "and its directory; two copies and a synced log record; two preallocated logs and "
        "a log record) and print wsfs's ratios against each",
    )
    p.add_argument("--quick", action="store_true", help="64 MiB, 20 x 2 MiB, 200 x 4 KiB")
    p.add_argument("--keep", action="store_true", help="keep the work directory")
    p.add_argument(
        "--defer-cleanup",
        action="store_true",
        help="remove each server's files at the end of the run, not as soon as it is "
        "done: on ext4 without a journal, files deleted in the last minute or so make "
        "each file created near them cost 0.1-0.9 ms more (the inode allocator skips "
        "them one by one), so the server after one that left thousands of files pays "
        "for them (wsfs creates two per small STOR, one per replica)",
    )
    p.add_argument(
        "--dir",
        default=None,
        help="where to make the work directory (default: $TMPDIR); on ext4 without a "
        "journal, creating a file costs 0.1-0.9 ms where many were deleted lately "
        "(printed as 'file create')",
    )
    args = p.parse_args()
    if args.quick:
        args.size_mib, args.clients, args.client_mib, args.small = 64, 20, 2, 200
    workdir = Path(tempfile.mkdtemp(prefix="wsfs-bench-", dir=args.dir))
    WsfsProcs.sockets = args.storage_sockets
    layouts = {"procs": WsfsProcs, "wslocal": Wsfs}
    kinds = [layouts[name] for name in args.layout.split(",")]
    rounds: dict[str, list[dict]] = {}
    print(f"load average at start: {loadavg()}", flush=True)
    if "procs" in args.layout.split(","):
        print(f"procs layout's storage: {args.storage_sockets} sockets", flush=True)
    print(f"file create in {workdir}: {create_cost_ms(workdir):.3f} ms", flush=True)
    try:
        for r in range(args.rounds):
            extra = list(DURABLE_REFERENCES) if args.durable_reference else []
            for kind in [*kinds, *extra, Pyftpdlib]:
                where = workdir / f"round{r}-{kind.__name__}"
                where.mkdir()
                if issubclass(kind, Pyftpdlib):
                    server = kind(where)
                else:
                    server = kind(where, args.replicas, args.nodes)
                try:
                    server.start()
                    rounds.setdefault(server.name, []).append(run(server, args))
                finally:
                    server.stop()
                if not args.defer_cleanup:
                    shutil.rmtree(where, ignore_errors=True)
        print(f"file create in {workdir} at end: {create_cost_ms(workdir):.3f} ms")
    finally:
        if not args.keep:
            shutil.rmtree(workdir, ignore_errors=True)
    print(f"load average at end: {loadavg()}")
    print(f"rounds: {args.rounds} (servers alternate; medians, ratios per round)")
    ref = rounds["pyftpdlib"]
    names = [n for n in rounds if n != "pyftpdlib"]
    print(f"{'':30} " + " ".join(f"{n:>14}" for n in names) + f" {'pyftpdlib':>14}  ratios")
    for key in ref[0]:
        cells, ratios = [], []
        for n in names:
            values = [x[key] for x in rounds[n]]
            if isinstance(values[0], float | int):
                cells.append(f"{median(values):14.2f}")
                per = [a / b for a, b in zip(values, (x[key] for x in ref)) if b]
                ratios.append(f"{n} {median(per):.2f}" if per else "")
            else:
                cells.append(f"{values[0]!s:>14.14}")
        refs = [x[key] for x in ref]
        shown = (
            f"{median(refs):14.2f}" if isinstance(refs[0], float | int) else f"{refs[0]!s:>14.14}"
        )
        print(f"{key:30} " + " ".join(cells) + f" {shown}  " + ", ".join(r for r in ratios if r))
    for reference in DURABLE_REFERENCES:
        durable = rounds.get(reference.name)
        if not durable:
            continue
        print(f"ratios against {reference.name} (per round):")
        for key in durable[0]:
            if not isinstance(durable[0][key], float | int) or not durable[0][key]:
                continue
            for n in names:
                if n == reference.name:
                    continue
                per = [a[key] / b[key] for a, b in zip(rounds[n], durable) if b[key]]
                shown = " ".join(f"{x:.2f}" for x in per)
                print(f"  {key:30} {n} {median(per):.2f}  ({shown})")
    for n in names:
        print(f"{n}: replicas {rounds[n][0]['replicas']}, {rounds[n][0]['fsync']}")


if __name__ == "__main__":
    main()
