"""``twistd -n wsfront`` as a real subprocess over real ``wsstorage`` processes,
configured from a TOML file, and its clear refusals of bad configuration."""

from __future__ import annotations

import hashlib
import json
import os
import re
import signal
import subprocess
import sys
import time

import pytest

from tests.storage_procs import StorageProcess
from tests.support import free_port, python_env, require_tool, twistd_argv

pytestmark = pytest.mark.slow


def wait_for(log_path, pattern: str, proc, timeout: float = 60.0) -> re.Match:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        m = re.search(pattern, log_path.read_text(), re.M)
        if m:
            return m
        assert proc.poll() is None, log_path.read_text()
        time.sleep(0.05)  # polling the log, not a synchronisation guess
    raise AssertionError(log_path.read_text())


def test_wsfront_from_a_toml_file_serves_files_on_three_storage_processes(tmp_path):
    curl = require_tool("curl")
    storage = [StorageProcess(tmp_path, f"s{i}").start() for i in (1, 2, 3)]
    try:
        catalog = f"sqlite:///{tmp_path / 'catalog.sqlite'}"
        added = subprocess.run(
            [sys.executable, "-m", "wsfront.cli", "--catalog", catalog, "user", "add", "ann"],
            input="ann-password-1", text=True, env=python_env(), capture_output=True,
        )  # fmt: skip
        assert added.returncode == 0, added.stderr
        http_port = free_port()
        toml = tmp_path / "fe.toml"
        toml.write_text(
            f'name = "fe1"\ncatalog = "{catalog}"\nreplicas = 2\n'
            f'secret-file = "{tmp_path / "secret"}"\n'
            f'http = "tcp:{http_port}:interface=127.0.0.1"\n'
            "storage = [" + ", ".join(f'"{s.name}={s.endpoint}"' for s in storage) + "]\n"
        )
        log_path = tmp_path / "fe.log"
        with open(log_path, "w") as log:
            argv = twistd_argv("wsfront", "--config", str(toml))
            argv.insert(argv.index("wsfront"), "--logger=wsfront.logs.json_observer")
            fe = subprocess.Popen(
                argv,
                env=python_env(), stdout=log, stderr=subprocess.STDOUT, cwd=tmp_path,
            )  # fmt: skip
        try:
            wait_for(log_path, r"\"proto\": \"http\"", fe)
            payload = os.urandom(2 << 20)
            (tmp_path / "p.bin").write_bytes(payload)
            url = f"http://ann:ann-password-1@127.0.0.1:{http_port}/p.bin"
            argv = [curl, "-sS", "-T", str(tmp_path / "p.bin"), "-w", "%{http_code}", url]
            put = subprocess.run(argv, capture_output=True, timeout=60)
            assert put.stdout.endswith(b"201"), put
            got = subprocess.run([curl, "-sS", url], capture_output=True, timeout=60)
            assert hashlib.sha256(got.stdout).hexdigest() == hashlib.sha256(payload).hexdigest()
            status = subprocess.run(
                [sys.executable, "-m", "wsfront.cli", "--catalog", catalog, "status"],
                env=python_env(), capture_output=True, text=True,
            )  # fmt: skip
            assert re.search(r"files: 1\b", status.stdout), status.stdout
            for s in storage:
                assert s.name in status.stdout
            as_json = subprocess.run(
                [sys.executable, "-m", "wsfront.cli", "--catalog", catalog, "--json", "status"],
                env=python_env(), capture_output=True, text=True,
            )  # fmt: skip
            events = [json.loads(line) for line in log_path.read_text().splitlines() if line]
            ids = {e["id"] for e in events if "upload {id} starts" in e.get("log_format", "")}
            [upload_id] = ids
            assert any(
                e.get("id") == upload_id and e.get("size") == len(payload)
                for e in events
                if "committed" in e.get("log_format", "")
            ), "one JSON event per session start and end, with its fields"
            repair = subprocess.run(
                [sys.executable, "-m", "wsfront.cli", "--catalog", catalog, "--json", "repair",
                 "--timeout", "60"],
                env=python_env(), capture_output=True, text=True, timeout=90,
            )  # fmt: skip
            assert repair.returncode == 0, repair.stderr
            assert json.loads(repair.stdout)["state"] == "done", "a front end ran the job"
            nodes = json.loads(as_json.stdout)["nodes"]
            assert sorted(n["name"] for n in nodes) == ["s1", "s2", "s3"]
            assert all(n["state"] == "up" and n["free_bytes"] > 0 for n in nodes), nodes
        finally:
            fe.send_signal(signal.SIGTERM)
            fe.wait(60)
    finally:
        for s in storage:
            s.stop()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--name", "a"], "missing options"),
        (["--name", "a", "--catalog", "sqlite:///x.sqlite", "--secret-file", "/nonexistent",
          "--http", "tcp:1"], "cannot read"),
        (["--name", "a", "--catalog", "sqlite:///x.sqlite", "--secret-file", "{secret}",
          "--http", "tcp:1", "--storage", "nonsense"], "NAME=ENDPOINT"),
    ],
)  # fmt: skip
def test_bad_configuration_is_a_clear_error(tmp_path, args, message):
    secret = tmp_path / "secret"
    secret.write_text("x" * 32)
    args = [a.replace("{secret}", str(secret)) for a in args]
    proc = subprocess.run(
        twistd_argv("wsfront", *args), env=python_env(), capture_output=True, text=True,
        timeout=60, cwd=tmp_path,
    )  # fmt: skip
    assert proc.returncode != 0
    assert message in proc.stdout + proc.stderr
    assert "Traceback" not in proc.stdout + proc.stderr


def test_unreachable_catalog_stops_wsfront_with_an_error_exit(tmp_path):
    secret = tmp_path / "secret"
    secret.write_text("x" * 32)
    port = free_port()  # nothing listens there
    proc = subprocess.run(
        twistd_argv("wsfront", "--name", "a", "--catalog", f"postgresql://nobody@127.0.0.1:{port}/x",
                    "--secret-file", str(secret), "--http", "tcp:0:interface=127.0.0.1"),
        env=python_env(), capture_output=True, text=True, timeout=60, cwd=tmp_path,
    )  # fmt: skip
    assert proc.returncode == 1
    assert "could not start" in proc.stdout
    assert "Connection refused" in proc.stdout


def test_wsstorage_serves_prometheus_metrics_when_asked(tmp_path):
    curl = require_tool("curl")
    port = free_port()
    proc = StorageProcess(tmp_path, "s1")
    try:
        proc.start(extra=("--metrics", f"tcp:{port}:interface=127.0.0.1"))
        deadline = time.monotonic() + 30
        while True:
            got = subprocess.run([curl, "-sS", f"http://127.0.0.1:{port}/metrics"],
                                 capture_output=True, text=True)  # fmt: skip
            if got.returncode == 0 or time.monotonic() > deadline:
                break
            time.sleep(0.05)  # polling until the metrics port listens
        assert "wsstorage_" in got.stdout, got
    finally:
        proc.stop()


def test_a_bad_endpoint_string_stops_wsfront_with_a_clear_error(tmp_path):
    secret = tmp_path / "secret"
    secret.write_text("x" * 32)
    proc = subprocess.run(
        twistd_argv("wsfront", "--name", "a", "--catalog", f"sqlite:///{tmp_path / 'c.sqlite'}",
                    "--secret-file", str(secret), "--http", "tcp:notaport"),
        env=python_env(), capture_output=True, text=True, timeout=60, cwd=tmp_path,
    )  # fmt: skip
    assert proc.returncode == 1
    assert "could not start" in proc.stdout
    assert "notaport" in proc.stdout
