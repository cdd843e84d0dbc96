"""``twistd -n wsfront --https`` as a real subprocess over three real
``wsstorage`` processes, driven with curl: PUT and GET over HTTPS with a
certificate made for the test, TLS 1.2 at least, HSTS, and a plain-HTTP
login refused because ``--require-tls`` is on."""

from __future__ import annotations

import hashlib
import os
import re
import signal
import subprocess
import sys

import pytest

from tests.storage_procs import StorageProcess
from tests.support import free_port, python_env, require_tool, twistd_argv
from tests.test_wsfront_plugin import wait_for
from tests.tls_support import make_certificate

pytestmark = pytest.mark.slow

USER, PASSWORD = "ann", "ann-password-1"


def test_wsfront_serves_https_and_refuses_plain_http_logins_with_require_tls(tmp_path):
    curl = require_tool("curl")
    storage = [StorageProcess(tmp_path, f"s{i}").start() for i in (1, 2, 3)]
    fe = None
    try:
        catalog = f"sqlite:///{tmp_path / 'catalog.sqlite'}"
        added = subprocess.run(
            [sys.executable, "-m", "wsfront.cli", "--catalog", catalog, "user", "add", USER],
            input=PASSWORD, text=True, env=python_env(), capture_output=True,
        )  # fmt: skip
        assert added.returncode == 0, added.stderr
        cert, key = make_certificate(tmp_path)
        http_port, https_port = free_port(), free_port()
        argv = twistd_argv(
            "wsfront", "--name", "fe1", "--catalog", catalog, "--replicas", "2",
            "--secret-file", str(tmp_path / "secret"),
            *[a for s in storage for a in ("--storage", f"{s.name}={s.endpoint}")],
            "--http", f"tcp:{http_port}:interface=127.0.0.1",
            "--https", f"tcp:{https_port}:interface=127.0.0.1",
            "--tls-cert", str(cert), "--tls-key", str(key), "--require-tls",
        )  # fmt: skip
        log_path = tmp_path / "fe.log"
        with open(log_path, "w") as log:
            fe = subprocess.Popen(
                argv, env=python_env(), stdout=log, stderr=subprocess.STDOUT, cwd=tmp_path
            )
        wait_for(log_path, r"serves https on", fe)
        wait_for(log_path, r"serves http on", fe)

        payload = os.urandom(3 << 20)
        (tmp_path / "p.bin").write_bytes(payload)
        url = f"https://{USER}:{PASSWORD}@127.0.0.1:{https_port}/p.bin"
        tls = [curl, "-sS", "--cacert", str(cert)]
        put = subprocess.run(
            [*tls, "-T", str(tmp_path / "p.bin"), "-w", "%{http_code} %{ssl_verify_result}", url],
            capture_output=True, timeout=60,
        )  # fmt: skip
        assert put.stdout.endswith(b"201 0"), put  # stored; the certificate verified
        got = subprocess.run([*tls, "-v", url], capture_output=True, timeout=60)
        assert hashlib.sha256(got.stdout).hexdigest() == hashlib.sha256(payload).hexdigest()
        assert re.search(rb"SSL connection using TLSv1\.3", got.stderr), got.stderr
        assert re.search(rb"< strict-transport-security: max-age=\d+", got.stderr, re.I)
        capped = subprocess.run(
            [*tls, "-v", "--tls-max", "1.2", "-o", os.devnull, url], capture_output=True, timeout=60
        )
        assert re.search(rb"SSL connection using TLSv1\.2", capped.stderr), capped.stderr
        old = subprocess.run(
            [*tls, "--tlsv1.1", "--tls-max", "1.1", "-o", os.devnull, url],
            capture_output=True, timeout=60,
        )  # fmt: skip
        assert old.returncode != 0  # no TLS 1.1 handshake (curl 35)

        plain = f"http://{USER}:{PASSWORD}@127.0.0.1:{http_port}/p.bin"
        refused = subprocess.run(
            [curl, "-sS", "-w", "\n%{http_code}", plain], capture_output=True, timeout=60
        )
        body, _, code = refused.stdout.rpartition(b"\n")
        assert code == b"403", refused
        assert body == f"TLS required: use https://127.0.0.1:{https_port}/p.bin\n".encode()
    finally:
        if fe is not None:
            fe.send_signal(signal.SIGTERM)
            fe.wait(60)
        for s in storage:
            s.stop()
