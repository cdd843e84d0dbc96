"""``twistd -n wsfront`` with ``--tls-cert/--tls-key``, ``--ftps`` and
``--require-tls``: explicit FTPS on the FTP port, implicit FTPS on its own
port, plain logins refused, curl ``--ssl-reqd`` and ftplib as the clients."""

from __future__ import annotations

import ftplib
import hashlib
import io
import os
import signal
import socket
import subprocess
import sys

import pytest

from tests.storage_procs import StorageProcess
from tests.support import free_port, python_env, require_tool, twistd_argv
from tests.test_ftps import ImplicitFTP_TLS, RecordingFTP_TLS
from tests.test_wsfront_plugin import wait_for
from tests.tls_support import self_signed

pytestmark = pytest.mark.slow


def _context(cert_path):
    import ssl

    return ssl.create_default_context(cafile=str(cert_path))


def test_wsfront_serves_explicit_and_implicit_ftps_and_requires_tls(tmp_path):
    curl = require_tool("curl")
    cert = self_signed(tmp_path / "tls")
    storage = [StorageProcess(tmp_path, f"s{i}").start() for i in (1, 2)]
    try:
        catalog = f"sqlite:///{tmp_path / 'catalog.sqlite'}"
        added = subprocess.run(
            [sys.executable, "-m", "wsfront.cli", "--catalog", catalog, "user", "add", "ann"],
            input="ann-password-1", text=True, env=python_env(), capture_output=True,
        )  # fmt: skip
        assert added.returncode == 0, added.stderr
        ftp_port, ftps_port = free_port(), free_port()
        argv = twistd_argv(
            "wsfront", "--name", "fe1", "--catalog", catalog, "--replicas", "2",
            "--secret-file", str(tmp_path / "secret"),
            "--ftp", f"tcp:{ftp_port}:interface=127.0.0.1",
            "--ftps", f"tcp:{ftps_port}:interface=127.0.0.1",
            "--tls-cert", str(cert.cert_path), "--tls-key", str(cert.key_path),
            "--require-tls",
            *[a for s in storage for a in ("--storage", f"{s.name}={s.endpoint}")],
        )  # fmt: skip
        log_path = tmp_path / "fe.log"
        with open(log_path, "w") as log:
            fe = subprocess.Popen(
                argv, env=python_env(), stdout=log, stderr=subprocess.STDOUT, cwd=tmp_path
            )
        try:
            wait_for(log_path, r"serves ftps on", fe)
            # Plain FTP: the login is refused, TLS is required.
            with socket.create_connection(("127.0.0.1", ftp_port), timeout=30) as plain:
                f = plain.makefile("rb")
                assert f.readline().startswith(b"220")
                plain.sendall(b"USER ann\r\n")
                assert f.readline().startswith(b"530")
            # Explicit FTPS with PROT P.
            data = os.urandom(1 << 20)
            c = RecordingFTP_TLS(context=_context(cert.cert_path), timeout=30)
            c.connect("127.0.0.1", ftp_port)
            c.login("ann", "ann-password-1")
            c.prot_p()
            c.storbinary("STOR e.bin", io.BytesIO(data))
            c.quit()
            assert c.data_connections == [(True, True)]
            # Implicit FTPS reads it back.
            i = ImplicitFTP_TLS(context=_context(cert.cert_path), timeout=30)
            i.connect("127.0.0.1", ftps_port)
            i.login("ann", "ann-password-1")
            i._prot_p = True
            got = io.BytesIO()
            i.retrbinary("RETR e.bin", got.write)
            i.quit()
            assert got.getvalue() == data
            # curl: explicit, --ssl-reqd (curl sends PBSZ 0 and PROT P itself).
            out = subprocess.run(
                [curl, "-sS", "--ssl-reqd", "--cacert", str(cert.cert_path),
                 "-u", "ann:ann-password-1", f"ftp://127.0.0.1:{ftp_port}/e.bin"],
                capture_output=True, timeout=60,
            )  # fmt: skip
            assert out.returncode == 0, out.stderr
            assert hashlib.sha256(out.stdout).digest() == hashlib.sha256(data).digest()
            # curl: implicit, ftps://
            out = subprocess.run(
                [curl, "-sS", "--cacert", str(cert.cert_path),
                 "-u", "ann:ann-password-1", f"ftps://127.0.0.1:{ftps_port}/e.bin"],
                capture_output=True, timeout=60,
            )  # fmt: skip
            assert out.returncode == 0, out.stderr
            assert out.stdout == data
            with pytest.raises(ftplib.error_perm, match="530"):
                plain_client = ftplib.FTP()
                plain_client.connect("127.0.0.1", ftp_port, timeout=30)
                plain_client.login("ann", "ann-password-1")
        finally:
            fe.send_signal(signal.SIGTERM)
            fe.wait(60)
    finally:
        for s in storage:
            s.stop()
