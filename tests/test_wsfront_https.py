"""``twistd -n wsfront --https`` as a real subprocess over three real
``wsstorage`` processes, driven with curl: PUT and GET over HTTPS with a
certificate made for the test, TLS 1.2 at least, HSTS, and a plain-HTTP
login refused because ``--require-tls`` is on."""

from __future__ import annotations

import hashlib
import os
import re
import subprocess

import pytest

from tests.support import require_tool, twistd_argv
from tests.tls_support import make_certificate
from tests.wsfront_procs import (
    ANY_PORT,
    PASSWORD,
    USER,
    running_wsfront,
    storage_args,
    storage_with_user,
)

pytestmark = pytest.mark.slow


def test_wsfront_serves_https_and_refuses_plain_http_logins_with_require_tls(tmp_path):
    curl = require_tool("curl")
    with storage_with_user(tmp_path, 3) as (catalog, storage):
        cert, key = make_certificate(tmp_path)
        argv = twistd_argv(
            "wsfront", "--name", "fe1", "--catalog", catalog, "--replicas", "2",
            "--secret-file", str(tmp_path / "secret"), *storage_args(storage),
            "--http", ANY_PORT, "--https", ANY_PORT,
            "--tls-cert", str(cert), "--tls-key", str(key), "--require-tls",
        )  # fmt: skip
        with running_wsfront(tmp_path, argv, {"http", "https"}) as (_, ports):
            http_port, https_port = ports["http"], ports["https"]
            payload = os.urandom(3 << 20)
            (tmp_path / "p.bin").write_bytes(payload)
            url = f"https://{USER}:{PASSWORD}@127.0.0.1:{https_port}/p.bin"
            tls = [curl, "-sS", "--cacert", str(cert)]
            written = "%{http_code} %{ssl_verify_result}"
            put = subprocess.run(
                [*tls, "-T", str(tmp_path / "p.bin"), "-w", written, url],
                capture_output=True, timeout=60,
            )  # fmt: skip
            assert put.stdout.endswith(b"201 0"), put  # stored; the certificate verified
            got = subprocess.run([*tls, "-v", url], capture_output=True, timeout=60)
            assert hashlib.sha256(got.stdout).hexdigest() == hashlib.sha256(payload).hexdigest()
            assert re.search(rb"SSL connection using TLSv1\.3", got.stderr), got.stderr
            assert re.search(rb"< strict-transport-security: max-age=\d+", got.stderr, re.I)
            capped = subprocess.run(
                [*tls, "-v", "--tls-max", "1.2", "-o", os.devnull, url],
                capture_output=True, timeout=60,
            )  # fmt: skip
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
