"""wsfront's certificate at start-up: one clear line for a pair TLS cannot
use, never a passphrase prompt, and a warning (but a start) for one whose
dates clients will refuse, now or within two weeks."""

from __future__ import annotations

import datetime
import os
import select
import subprocess
import sys
import time

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from twisted.logger import globalLogPublisher
from twisted.python import usage

from tests.support import python_env, twistd_argv
from tests.tls_support import make_certificate
from tests.wsfront_procs import ANY_PORT, running_wsfront
from wsfront.config import FrontendOptions

DAY, HOUR = datetime.timedelta(days=1), datetime.timedelta(hours=1)


@pytest.fixture
def secret(tmp_path):
    path = tmp_path / "secret"
    path.write_text("s" * 32)
    return str(path)


def _argv(secret: str, *tls: str) -> list[str]:
    return [
        "--name", "fe1", "--catalog", "sqlite:///x.sqlite", "--secret-file", secret,
        "--https", "tcp:8443", *tls,
    ]  # fmt: skip


def _parse(argv: list[str]) -> tuple[object, list[str]]:
    """(the configuration, the warnings logged while reading the options)."""
    events: list[dict] = []
    globalLogPublisher.addObserver(events.append)
    try:
        opts = FrontendOptions()
        opts.parseOptions(argv)
    finally:
        globalLogPublisher.removeObserver(events.append)
    warned = [e for e in events if e.get("log_level") and e["log_level"].name == "warn"]
    return opts.config, [e["log_format"].format(**e) for e in warned]


def _refusal(argv: list[str]) -> str:
    with pytest.raises(usage.UsageError) as raised:
        _parse(argv)
    return str(raised.value)


def _encrypted(key_path, traditional: bool = False) -> bytes:
    key = serialization.load_pem_private_key(key_path.read_bytes(), password=None)
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.TraditionalOpenSSL
        if traditional
        else serialization.PrivateFormat.PKCS8,
        serialization.BestAvailableEncryption(b"passphrase"),
    )


def test_a_good_certificate_starts_without_a_warning(tmp_path, secret):
    cert, key = make_certificate(tmp_path)
    config, warned = _parse(_argv(secret, "--tls-cert", str(cert), "--tls-key", str(key)))
    assert config.tls_cert == str(cert) and warned == []


def test_a_certificate_file_without_its_key_asks_for_tls_key(tmp_path, secret):
    cert, _ = make_certificate(tmp_path)
    assert _refusal(_argv(secret, "--tls-cert", str(cert))) == (
        f"no private key in {cert}; give --tls-key"
    )
    assert _refusal(_argv(secret, "--tls-cert", str(cert), "--tls-key", str(cert))) == (
        f"--tls-key {cert}: no private key in it"
    )


@pytest.mark.parametrize("traditional", [False, True], ids=["pkcs8", "traditional"])
def test_an_encrypted_key_is_refused_in_one_line(tmp_path, secret, traditional):
    cert, key = make_certificate(tmp_path)
    locked = tmp_path / "locked.pem"
    locked.write_bytes(_encrypted(key, traditional))
    assert _refusal(_argv(secret, "--tls-cert", str(cert), "--tls-key", str(locked))) == (
        f"--tls-key {locked}: encrypted private keys are not supported; "
        "decrypt it with openssl pkey"
    )
    both = tmp_path / "both.pem"
    both.write_bytes(cert.read_bytes() + locked.read_bytes())
    message = _refusal(_argv(secret, "--tls-cert", str(both)))
    assert message.startswith(f"--tls-cert {both}: encrypted private keys are not supported")
    assert "--tls-key" in message and "\n" not in message


def test_a_key_of_another_certificate_or_no_certificate_is_refused(tmp_path, secret):
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    cert, _ = make_certificate(tmp_path / "a")
    _, other_key = make_certificate(tmp_path / "b")
    assert _refusal(_argv(secret, "--tls-cert", str(cert), "--tls-key", str(other_key))) == (
        f"--tls-cert {cert} with --tls-key {other_key}: the private key is not the certificate's"
    )
    assert _refusal(_argv(secret, "--tls-cert", str(other_key))) == (
        f"--tls-cert {other_key}: no PEM certificate"
    )


@pytest.mark.parametrize(
    ("valid_from", "valid_until", "warning"),
    [
        (-30 * DAY, -2 * DAY, "the certificate expired on {until}: clients will refuse it"),
        (2 * DAY, 90 * DAY, "the certificate is not valid until {from_}: clients will refuse it"),
        (-30 * DAY, 3 * DAY + HOUR, "the certificate expires on {until} (in 3 days)"),
    ],
    ids=["expired", "not-yet-valid", "expiring-soon"],
)  # fmt: skip
def test_a_certificate_clients_refuse_for_its_dates_is_warned_about_once_and_starts(
    tmp_path, secret, valid_from, valid_until, warning
):
    cert, key = make_certificate(tmp_path, valid_from=valid_from, valid_until=valid_until)
    config, warned = _parse(_argv(secret, "--tls-cert", str(cert), "--tls-key", str(key)))
    parsed = x509.load_pem_x509_certificate(cert.read_bytes())
    until = parsed.not_valid_after_utc.strftime("%Y-%m-%d %H:%M:%S UTC")
    from_ = parsed.not_valid_before_utc.strftime("%Y-%m-%d %H:%M:%S UTC")
    assert config.tls_cert == str(cert)
    assert warned == [f"--tls-cert {cert}: " + warning.format(until=until, from_=from_)]


@pytest.mark.slow
def test_wsfront_serves_https_with_an_expired_certificate_and_logs_why_clients_refuse(tmp_path):
    """The warning reaches twistd's log (it is logged before logging starts,
    from the options), and the front end still serves."""
    (tmp_path / "secret").write_text("s" * 32)
    cert, key = make_certificate(tmp_path, valid_from=-30 * DAY, valid_until=-DAY)
    argv = twistd_argv(
        "wsfront", "--name", "fe1", "--catalog", f"sqlite:///{tmp_path / 'c.sqlite'}",
        "--secret-file", str(tmp_path / "secret"), "--storage", "s1=tcp:127.0.0.1:1",
        "--replicas", "1", "--https", ANY_PORT, "--tls-cert", str(cert), "--tls-key", str(key),
    )  # fmt: skip
    with running_wsfront(tmp_path, argv, {"https"}) as (fe, _):
        log = fe.log()
    warned = [line for line in log.splitlines() if "the certificate expired on" in line]
    assert len(warned) == 1 and "[wsfront.config#warn]" in warned[0], log[-3000:]


def _on_a_terminal(argv: list[str], cwd, deadline: float = 60.0) -> tuple[str, int | None]:
    """Run ``argv`` with a pseudo-terminal as its controlling terminal (where
    OpenSSL asks for a passphrase) and stdin/stdout/stderr; (its output, its
    exit code or None when it was still running, waiting for an answer)."""
    master, slave = os.openpty()
    # The child leads a new session; opening the terminal by name (without
    # O_NOCTTY) makes it the session's controlling terminal, so /dev/tty is it.
    wrapper = [
        sys.executable, "-c",
        "import os, sys; os.close(os.open(os.ttyname(0), os.O_RDWR)); "
        "os.execv(sys.argv[1], sys.argv[1:])",
        *argv,
    ]  # fmt: skip
    proc = subprocess.Popen(
        wrapper, stdin=slave, stdout=slave, stderr=slave, cwd=cwd,
        env=python_env(), start_new_session=True,
    )  # fmt: skip
    os.close(slave)
    output = b""
    end = time.monotonic() + deadline
    try:
        while b"pass phrase" not in output.lower() and time.monotonic() < end:
            ready, _, _ = select.select([master], [], [], max(0.0, end - time.monotonic()))
            if not ready:
                break
            try:
                chunk = os.read(master, 65536)
            except OSError:  # EIO: every copy of the terminal is closed
                break
            if not chunk:
                break
            output += chunk
        code = proc.poll()
        if code is None and b"pass phrase" not in output.lower():  # else it waits for one
            try:
                code = proc.wait(timeout=max(0.0, end - time.monotonic()))
            except subprocess.TimeoutExpired:
                code = None
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait()
        os.close(master)
    return output.decode(errors="replace"), code


@pytest.mark.slow
def test_twistd_with_an_encrypted_key_on_a_terminal_never_prompts(tmp_path):
    cert, key = make_certificate(tmp_path)
    locked = tmp_path / "locked.pem"
    locked.write_bytes(_encrypted(key))
    (tmp_path / "secret").write_text("s" * 32)
    argv = twistd_argv(
        "wsfront", "--name", "fe1", "--catalog", f"sqlite:///{tmp_path / 'c.sqlite'}",
        "--secret-file", str(tmp_path / "secret"), "--https", ANY_PORT,
        "--tls-cert", str(cert), "--tls-key", str(locked),
    )  # fmt: skip
    output, code = _on_a_terminal(argv, tmp_path)
    assert "pass phrase" not in output.lower(), output[-2000:]
    assert code == 1, output[-2000:]
    refusal = f"--tls-key {locked}: encrypted private keys are not supported; decrypt it with"
    assert output.rstrip().splitlines()[-1].endswith(refusal + " openssl pkey"), output[-2000:]
