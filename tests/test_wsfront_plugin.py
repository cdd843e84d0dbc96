"""``twistd -n wsfront`` as a real subprocess over real ``wsstorage`` processes,
configured from a TOML file, and its clear refusals of bad configuration."""

from __future__ import annotations

import hashlib
import json
import os
import re
import socket
import subprocess
import sys

import pytest

from tests.storage_procs import StorageProcess
from tests.support import python_env, require_tool, twistd_argv, wait_ports
from tests.wsfront_procs import (
    ANY_PORT,
    PASSWORD,
    USER,
    running_wsfront,
    storage_with_user,
)

pytestmark = pytest.mark.slow


#: The JSON log's "serves" event: its protocol, then its address's port.
JSON_SERVES = r'"proto": "(\w+)".*"wsfront \{name\} serves \{proto\} on \{addr\}".*?port=(\d+)'


def test_wsfront_from_a_toml_file_serves_files_on_three_storage_processes(tmp_path):
    curl = require_tool("curl")
    with storage_with_user(tmp_path, 3) as (catalog, storage):
        toml = tmp_path / "fe.toml"
        toml.write_text(
            f'name = "fe1"\ncatalog = "{catalog}"\nreplicas = 2\n'
            f'secret-file = "{tmp_path / "secret"}"\n'
            f'http = "{ANY_PORT}"\n'
            "storage = [" + ", ".join(f'"{s.name}={s.endpoint}"' for s in storage) + "]\n"
        )
        argv = twistd_argv("wsfront", "--config", str(toml))
        argv.insert(argv.index("wsfront"), "--logger=wsfront.logs.json_observer")
        with running_wsfront(tmp_path, argv, {"http"}, JSON_SERVES) as (fe, ports):
            payload = os.urandom(2 << 20)
            (tmp_path / "p.bin").write_bytes(payload)
            url = f"http://{USER}:{PASSWORD}@127.0.0.1:{ports['http']}/p.bin"
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
            events = [json.loads(line) for line in fe.log().splitlines() if line]
            # A 2 MiB PUT commits within its first checkpoint period: one
            # event for its start and its commit (wsfront.transfer.upload_log).
            [done] = [e for e in events if "upload {id} committed" in e.get("log_format", "")]
            assert done["log_namespace"] == "wsfront.transfer.upload_log"
            assert (done["user"], done["size"], done["offset"]) == (USER, len(payload), 0)
            assert done["path"].endswith("/p.bin"), done
            assert not [e for e in events if e.get("id") == done["id"] and e is not done]
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


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--name", "a"], "missing options"),
        (["--name", "a", "--catalog", "sqlite:///x.sqlite", "--secret-file", "/nonexistent",
          "--http", "tcp:1"], "cannot read"),
        (["--name", "a", "--catalog", "sqlite:///x.sqlite", "--secret-file", "{secret}",
          "--http", "tcp:1", "--storage", "nonsense"], "NAME=ENDPOINT"),
        (["--name", "a", "--catalog", "sqlite:///x.sqlite", "--secret-file", "{secret}",
          "--http", "tcp:1", "--upload-expiry-hours", "abc"], "--upload-expiry-hours 'abc'"),
        (["--name", "a", "--catalog", "sqlite:///x.sqlite", "--secret-file", "{secret}",
          "--http", "tcp:1", "--public-address", "not_an_ip"], "not an IPv4 address"),
        # A name wsstorage --name refuses: no server could ever answer to it.
        (["--name", "a", "--catalog", "sqlite:///x.sqlite", "--secret-file", "{secret}",
          "--http", "tcp:1", "--storage", "s 1=tcp:127.0.0.1:7001"],
         "'s 1' is not a storage server name"),
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
    assert proc.returncode == 1
    assert message in proc.stdout + proc.stderr
    assert "Traceback" not in proc.stdout + proc.stderr
    assert not (tmp_path / "x.sqlite").exists(), "refused before the catalog was opened"


def test_unreachable_catalog_stops_wsfront_with_an_error_exit(tmp_path):
    secret = tmp_path / "secret"
    secret.write_text("x" * 32)
    # A port bound here and never listened on: connects to it are refused,
    # and no other process can start listening on it during the test.
    with socket.socket() as unreachable:
        unreachable.bind(("127.0.0.1", 0))
        port = unreachable.getsockname()[1]
        proc = subprocess.run(
            twistd_argv("wsfront", "--name", "a",
                        "--catalog", f"postgresql://nobody@127.0.0.1:{port}/x",
                        "--secret-file", str(secret), "--http", ANY_PORT),
            env=python_env(), capture_output=True, text=True, timeout=60, cwd=tmp_path,
        )  # fmt: skip
    assert proc.returncode == 1
    assert "could not start" in proc.stdout
    assert "Connection refused" in proc.stdout
    # The operator's environment, not a bug: one line, as for a bad option.
    assert "Traceback" not in proc.stdout + proc.stderr


def test_a_port_in_use_stops_wsfront_with_one_line(tmp_path):
    secret = tmp_path / "secret"
    secret.write_text("x" * 32)
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        proc = subprocess.run(
            twistd_argv("wsfront", "--name", "a",
                        "--catalog", f"sqlite:///{tmp_path / 'c.sqlite'}",
                        "--secret-file", str(secret),
                        "--http", f"tcp:{port}:interface=127.0.0.1"),
            env=python_env(), capture_output=True, text=True, timeout=60, cwd=tmp_path,
        )  # fmt: skip
    assert proc.returncode == 1
    assert "could not start" in proc.stdout
    assert "Address already in use" in proc.stdout
    assert "Traceback" not in proc.stdout + proc.stderr


def test_wsstorage_serves_prometheus_metrics_when_asked(tmp_path):
    curl = require_tool("curl")
    proc = StorageProcess(tmp_path, "s1")
    try:
        proc.start(extra=("--metrics", ANY_PORT))
        metrics = r"wsstorage (metrics) on .*?port=(\d+)"
        port = wait_ports(proc.proc, proc.log, metrics, {"metrics"})["metrics"]
        got = subprocess.run([curl, "-sS", f"http://127.0.0.1:{port}/metrics"],
                             capture_output=True, text=True, timeout=60)  # fmt: skip
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
    # Refused while the options are read, before anything is opened.
    assert proc.returncode == 1
    assert "--http 'tcp:notaport': not a server endpoint" in proc.stdout + proc.stderr
    assert "Traceback" not in proc.stdout + proc.stderr
