"""The ``wsfs`` CLI never echoes a catalog URL's password: its error lines
end up in terminals, scroll-back, tickets and CI logs.  PostgreSQL here
trusts every connection, so any password is accepted and a wrong one
still reaches the errors that quote the URL."""

from __future__ import annotations

import shutil
import socket
import subprocess
import sys
from urllib.parse import urlparse

import pytest

from tests.support import postgres_url, python_env
from wsfront.cli_output import masked_url

SECRET = "S3cretPW"


def wsfs(catalog: str, *args: str, cwd=None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "wsfront.cli", "--catalog", catalog, *args],
        capture_output=True, text=True, env=python_env(), cwd=cwd, timeout=60,
    )  # fmt: skip


def with_password(url: str, database: str | None = None) -> str:
    parsed = urlparse(url)
    netloc = f"{parsed.username or 'postgres'}:{SECRET}@{parsed.hostname}:{parsed.port or 5432}"
    return parsed._replace(netloc=netloc, path=database or parsed.path).geturl()


def masked_error(proc: subprocess.CompletedProcess, *words: str) -> None:
    assert proc.returncode == 1, (proc.returncode, proc.stderr)
    assert SECRET not in proc.stderr + proc.stdout, proc.stderr
    assert ":***@" in proc.stderr, proc.stderr
    for word in words:
        assert word in proc.stderr, proc.stderr


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("postgresql://u:pw@h:5/db", "postgresql://u:***@h:5/db"),
        ("postgresql://u:p@w@h/db", "postgresql://u:***@h/db"),
        ("postgresql://u@h/db?password=pw&sslmode=require",
         "postgresql://u@h/db?password=***&sslmode=require"),
        ("postgresql://u@h/db", "postgresql://u@h/db"),
        ("sqlite:////var/lib/wsfs/catalog.sqlite", "sqlite:////var/lib/wsfs/catalog.sqlite"),
    ],
)  # fmt: skip
def test_masked_url(url, shown):
    assert masked_url(url) == shown


@pytest.mark.postgres
def test_an_unknown_database_or_a_refused_server_is_named_without_the_password():
    base = postgres_url()
    masked_error(wsfs(with_password(base, "/wsfs_no_such_db"), "status"), "wsfs_no_such_db")
    with socket.socket() as refused:  # bound, never listening
        refused.bind(("127.0.0.1", 0))
        port = refused.getsockname()[1]
        url = f"postgresql://postgres:{SECRET}@127.0.0.1:{port}/x"
        masked_error(wsfs(url, "status"), "cannot use the catalog")


def test_a_mistyped_scheme_is_named_without_the_password():
    masked_error(wsfs(f"postgresq://postgres:{SECRET}@127.0.0.1/x", "status"), "not a catalog URL")


@pytest.mark.postgres
def test_a_database_without_a_catalog_is_named_without_the_password():
    from tests.catalog_fixtures import postgres_schema_url

    for url in postgres_schema_url():
        masked_error(wsfs(with_password(url), "status"), "no catalog in")


@pytest.mark.postgres
def test_a_failed_backup_is_named_without_the_password(tmp_path):
    if shutil.which("pg_dump") is None:
        pytest.skip("pg_dump is not installed")
    url = with_password(postgres_url(), "/wsfs_no_such_db")
    proc = wsfs(url, "backup", str(tmp_path / "x.dump"))
    assert proc.returncode == 1 and SECRET not in proc.stderr, proc.stderr


def test_backup_of_an_unknown_scheme_names_it_without_the_password(tmp_path):
    """The CLI refuses such a URL first; ``backup_catalog`` alone must not leak it either."""
    from wsfront.maintenance.backup import backup_catalog

    with pytest.raises(ValueError) as refused:
        backup_catalog(f"mysql://u:{SECRET}@h/db", str(tmp_path / "x"))
    assert SECRET not in str(refused.value) and "u:***@h" in str(refused.value)


#: Passwords ``repr`` escapes (a backslash, quotes): the quoted URL in a
#: message showed them as ``a\\b``, which no plain search for the URL found.
ESCAPED = ["a\\b" + SECRET, "a'b\"c" + SECRET, "tab\t" + SECRET]


@pytest.mark.parametrize("password", ESCAPED)
@pytest.mark.parametrize(
    "form", ["postgresq://postgres:{}@127.0.0.1/x", "sqlite://u:{}@h/x.sqlite"]
)
def test_a_password_repr_escapes_is_masked_too(form, password):
    """A mistyped scheme, a SQLite URL with a host: both quote the URL."""
    proc = wsfs(form.format(password), "status")
    assert proc.returncode == 1, proc.stderr
    for shown in (password, repr(password)[1:-1], SECRET):
        assert shown not in proc.stderr + proc.stdout, proc.stderr
    assert ":***@" in proc.stderr, proc.stderr


@pytest.mark.parametrize("password", ESCAPED)
def test_the_front_ends_catalog_option_is_named_without_the_password(password, tmp_path):
    from twisted.python import usage

    from wsfront.config import FrontendOptions

    secret = tmp_path / "secret"
    secret.write_text("s" * 32)
    opts = FrontendOptions()
    with pytest.raises(usage.UsageError) as refused:
        opts.parseOptions(
            ["--name", "a", "--catalog", f"mysql://u:{password}@h/db", "--ftp", "tcp:1",
             "--secret-file", str(secret), "--storage", "s1=tcp:127.0.0.1:1"]
        )  # fmt: skip
    assert SECRET not in str(refused.value) and "u:***@h" in str(refused.value), refused.value
