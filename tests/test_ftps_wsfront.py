"""``twistd -n wsfront`` with ``--tls-cert/--tls-key``, ``--ftps`` and
``--require-tls``: explicit FTPS on the FTP port, implicit FTPS on its own
port, plain logins refused, curl ``--ssl-reqd`` and ftplib as the clients."""

from __future__ import annotations

import ftplib
import hashlib
import io
import os
import socket
import subprocess

import pytest

from tests.support import require_tool, twistd_argv
from tests.test_ftps import ImplicitFTP_TLS, RecordingFTP_TLS
from tests.tls_support import self_signed
from tests.wsfront_procs import ANY_PORT, running_wsfront, storage_args, storage_with_user

pytestmark = pytest.mark.slow


def _context(cert_path):
    import ssl

    return ssl.create_default_context(cafile=str(cert_path))


def test_wsfront_serves_explicit_and_implicit_ftps_and_requires_tls(tmp_path):
    curl = require_tool("curl")
    cert = self_signed(tmp_path / "tls")
    with storage_with_user(tmp_path, 2) as (catalog, storage):
        argv = twistd_argv(
            "wsfront", "--name", "fe1", "--catalog", catalog, "--replicas", "2",
            "--secret-file", str(tmp_path / "secret"),
            "--ftp", ANY_PORT, "--ftps", ANY_PORT,
            "--tls-cert", str(cert.cert_path), "--tls-key", str(cert.key_path),
            "--require-tls", *storage_args(storage),
        )  # fmt: skip
        with running_wsfront(tmp_path, argv, {"ftp", "ftps"}) as (_, ports):
            ftp_port, ftps_port = ports["ftp"], ports["ftps"]
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
