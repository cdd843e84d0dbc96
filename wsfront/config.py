"""Command-line options of ``twistd wsfront``, with a TOML file beneath them.

Every option can also come from ``--config FILE.toml`` under the same name
(``passive-ports = "30000-30100"``, ``storage = ["s1=tcp:host:7001"]``); the
command line wins.  Problems are reported as ``usage.UsageError`` with a
message that names the option, so twistd prints it and exits non-zero.
"""

from __future__ import annotations

import datetime
import ipaddress
import math
import re
import socket
import tomllib
from typing import Any

import attrs
from twisted.logger import Logger
from twisted.python import usage

from wsfront.certificate import EncryptedKey, NoPrivateKey, PemError, parse_pem, validity_warning
from wsfront.ftp.addresses import parse_port_range
from wsfront.maintenance.lease import DEFAULT_TTL_SECONDS, MIN_TTL_SECONDS
from wsfront.paths import PathError, is_virtual_path, resolve
from wsfront.transfer.pending_per_user import DEFAULT_LIMIT as DEFAULT_PENDING_LIMIT
from wsfront.urls import masked_url
from wsstorage.auth import SecretError, load_secret
from wsstorage.names import storage_name_problem
from wsstorage.service import endpoint_problem

log = Logger()

#: A DNS host name: dot-separated labels of letters, digits and inner hyphens.
_HOST_NAME = re.compile(r"(?!-)[A-Za-z0-9-]{1,63}(?<!-)(\.(?!-)[A-Za-z0-9-]{1,63}(?<!-))*\.?")


#: The shortest retention of finished uploads' rows (an hour) short of 0,
#: which keeps them for ever (``FrontendConfig.upload_retention_days``).
MIN_UPLOAD_RETENTION_DAYS = 1 / 24


@attrs.frozen
class FrontendConfig:
    """A front end's settings after the command line and TOML are merged."""

    name: str
    catalog: str
    storage: tuple[tuple[str, str], ...]
    replicas: int
    secret: bytes
    ftp: str | None = None
    ftps: str | None = None
    http: str | None = None
    passive_ports: tuple[int, int] | None = None
    passive_ports_per_address: int | None = None
    """Ports of the ``passive_ports`` range one client address may hold at
    once (None: half the range, at least one); no share without a range."""
    public_address: str | None = None
    checkpoint_mib: int = 8
    upload_expiry_hours: float = 24.0
    upload_retention_days: float = 7.0
    """Days the catalog keeps a finished upload's row (GC purges it then):
    how long a tus client can still learn by HEAD that an upload completed.
    0 keeps them for ever; otherwise at least ``MIN_UPLOAD_RETENTION_DAYS``.
    Whichever front end holds the maintenance lease purges by its own
    setting, so all front ends should be given the same."""
    drain_seconds: float = 30.0
    https: str | None = None
    tls_cert: str | None = None
    tls_key: str | None = None
    require_tls: bool = False
    require_tls_users: tuple[str, ...] = ()
    require_tls_session_reuse: bool = False
    strict_tls_upload_eof: bool = False
    anonymous: bool = False
    anonymous_root: str = "/pub"
    max_connections_per_address: int = 256
    max_connections: int = 4096
    max_sessions_per_user: int = 64
    max_pending_uploads_per_user: int = DEFAULT_PENDING_LIMIT
    """Interrupted uploads one user may leave pending on a front end before a
    new upload is refused (resuming one never is)."""
    login_failures_per_address: int = 10
    login_failures_per_user: int = 50
    login_window_seconds: float = 300.0
    http_header_timeout: float = 30.0
    """Seconds an HTTP request's line and headers may take (then 408)."""
    http_body_min_rate: float | None = 500.0
    """Bytes a second an HTTP request body must average while read (None: no floor)."""
    http_body_rate_window: float = 30.0
    liveness_lease_seconds: float = DEFAULT_TTL_SECONDS
    """How long this front end counts as alive after its last renewal of its
    liveness lease (renewed every third of it)."""

    def tls_pem(self) -> bytes | None:
        """Certificate and key as one PEM blob, for ``PrivateCertificate.loadPEM``
        (FTPS and HTTPS share them); None when no certificate is set."""
        if self.tls_cert is None:
            return None
        return read_pem(self.tls_cert, self.tls_key)


def read_secret(path: str) -> bytes:
    """The cluster secret from ``path`` (wsstorage's rules); UsageError when unusable."""
    try:
        return load_secret(path)
    except SecretError as e:
        raise usage.UsageError(f"--secret-file {path}: {e}") from None


def read_pem(cert_path: str, key_path: str | None) -> bytes:
    """The certificate file, then the key file (when it is another file)."""
    paths = [cert_path] + ([key_path] if key_path and key_path != cert_path else [])
    blobs = []
    for path in paths:
        try:
            with open(path, "rb") as f:
                blobs.append(f.read())
        except OSError as e:
            raise usage.UsageError(f"cannot read {path}: {e.strerror}") from e
    return b"\n".join(blobs)


def check_certificate(cert_path: str, key_path: str | None) -> None:
    """Refuse at start-up, in one line, a certificate/key pair TLS could
    not use; warn (and go on) about a certificate clients will refuse for
    its dates, or soon will: its operator may be renewing it right now."""
    try:
        parsed = parse_pem(read_pem(cert_path, key_path))
    except NoPrivateKey:
        if key_path:
            raise usage.UsageError(f"--tls-key {key_path}: no private key in it") from None
        raise usage.UsageError(f"no private key in {cert_path}; give --tls-key") from None
    except EncryptedKey:
        unsupported = "encrypted private keys are not supported"
        if key_path:
            raise usage.UsageError(
                f"--tls-key {key_path}: {unsupported}; decrypt it with openssl pkey"
            ) from None
        raise usage.UsageError(
            f"--tls-cert {cert_path}: {unsupported}; decrypt the key with openssl pkey"
            " into a file for --tls-key"
        ) from None
    except PemError as e:
        given = f"--tls-cert {cert_path}" + (f" with --tls-key {key_path}" if key_path else "")
        raise usage.UsageError(f"{given}: {e}") from None
    problem = validity_warning(parsed.certificate, datetime.datetime.now(datetime.UTC))
    if problem is not None:
        log.warn("--tls-cert {path}: {problem}", path=cert_path, problem=problem)


def public_ipv4(text: str) -> str:
    """The IPv4 address PASV replies advertise, from ``--public-address``.

    An IPv4 address is taken as it is.  A host name is resolved once, now,
    as proftpd's MasqueradeAddress and vsftpd's pasv_addr_resolve do: a
    name that resolves to nothing must stop the start, not fail every PASV
    later.  IPv6 cannot be written in a 227 reply (EPSV needs no address).
    """
    try:
        address = ipaddress.ip_address(text)
    except ValueError:
        pass
    else:
        if not isinstance(address, ipaddress.IPv4Address):
            raise usage.UsageError(f"--public-address {text}: PASV replies need an IPv4 address")
        return str(address)
    if not _HOST_NAME.fullmatch(text) or text.rstrip(".").rsplit(".", 1)[-1].isdigit():
        raise usage.UsageError(f"--public-address {text!r}: not an IPv4 address or a host name")
    try:
        infos = socket.getaddrinfo(text, None, socket.AF_INET, socket.SOCK_STREAM)
    except OSError as e:
        raise usage.UsageError(f"--public-address {text}: cannot resolve it: {e}") from None
    resolved = infos[0][4][0]
    log.info("--public-address {name} resolved to {address}", name=text, address=resolved)
    return resolved


def parse_storage(spec: str) -> tuple[str, str]:
    """``NAME=ENDPOINT`` -> (name, endpoint)."""
    name, sep, endpoint = spec.partition("=")
    if not sep or not name or not endpoint:
        raise usage.UsageError(f"--storage {spec!r}: expected NAME=ENDPOINT")
    # The name wsstorage --name takes: a server can only answer to that.
    problem = storage_name_problem(name)
    if problem is not None:
        raise usage.UsageError(
            f"--storage {spec!r}: {name!r} is not a storage server name: {problem} "
            "(as wsstorage --name)"
        )
    # Before the catalog: it would keep a bad endpoint for every later front end.
    problem = endpoint_problem(endpoint, client=True)
    if problem is not None:
        raise usage.UsageError(f"--storage {name}={endpoint}: bad endpoint: {problem}")
    return name, endpoint


class FrontendOptions(usage.Options):
    """``twistd -n wsfront --name NAME --ftp EP --http EP --catalog URL
    --storage NAME=EP ... --replicas N --secret-file FILE``."""

    optParameters = [
        ["config", None, None, "TOML file with any of these options (command line wins)"],
        ["name", None, None, "this front end's name (unique in the cluster)"],
        ["ftp", None, None, "FTP endpoint, e.g. tcp:2121:interface=127.0.0.1"],
        ["ftps", None, None, "implicit FTPS endpoint (needs a certificate)"],
        ["http", None, None, "HTTP endpoint, e.g. tcp:8080:interface=127.0.0.1"],
        ["catalog", None, None, "sqlite:///abs/path or postgresql://user@host/db"],
        ["replicas", None, None, "replicas of every file (default 2)"],
        ["secret-file", None, None, "file holding the cluster secret"],
        ["passive-ports", None, None, "passive FTP data ports LO-HI"],
        [
            "passive-ports-per-address",
            None,
            None,
            "ports of that range one client address may hold (default half of it)",
        ],
        ["public-address", None, None, "address advertised in PASV replies"],
        ["checkpoint-mib", None, None, "checkpoint every so many MiB (default 8)"],
        ["upload-expiry-hours", None, None, "drop interrupted uploads after (default 24)"],
        ["upload-retention-days", None, None, "forget finished uploads after (default 7, 0 never)"],
        ["drain-seconds", None, None, "on SIGUSR1, let transfers finish this long (default 30)"],
        ["https", None, None, "HTTPS endpoint (needs --tls-cert), e.g. tcp:8443"],
        ["tls-cert", None, None, "PEM certificate for FTPS and HTTPS (may hold the key too)"],
        ["tls-key", None, None, "PEM private key, when not in --tls-cert"],
        ["anonymous-root", None, None, "directory anonymous users see read-only (default /pub)"],
        ["max-connections-per-address", None, None, "per protocol and client address (256)"],
        ["max-connections", None, None, "open connections per protocol (default 4096)"],
        ["max-sessions-per-user", None, None, "concurrent transfers per user (default 64)"],
        [
            "max-pending-uploads-per-user",
            None,
            None,
            f"interrupted uploads per user ({DEFAULT_PENDING_LIMIT})",
        ],
        ["login-failures-per-address", None, None, "failed logins an address may make (10)"],
        ["login-failures-per-user", None, None, "failed logins for one user, any address (50)"],
        ["login-window-seconds", None, None, "how long a failed login counts (default 300)"],
        ["http-header-timeout", None, None, "seconds for an HTTP request's headers (default 30)"],
        ["http-body-min-rate", None, None, "bytes/s an HTTP body must average; 0: any (500)"],
        ["http-body-rate-window", None, None, "seconds that rate is averaged over (default 30)"],
        [
            "liveness-lease-seconds",
            None,
            None,
            f"seconds unrenewed before this front end counts as dead ({DEFAULT_TTL_SECONDS:g})",
        ],
    ]
    optFlags = [
        ["require-tls", None, "logins need TLS: FTP AUTH TLS + PROT P, HTTP over --https"],
        ["anonymous", None, "let anonymous users read anonymous-root (FTP and HTTP)"],
        [
            "require-tls-session-reuse",
            None,
            "FTPS: refuse PROT P data connections not resuming the control TLS session",
        ],
        [
            "strict-tls-upload-eof",
            None,
            "FTPS: commit a PROT P upload only after the client's TLS close_notify",
        ],
    ]

    def __init__(self) -> None:
        super().__init__()
        self["storage"] = []
        self["require-tls-user"] = []

    def opt_require_tls_user(self, name: str) -> None:
        """this user may log in over TLS only (repeatable)"""
        self["require-tls-user"].append(name)

    def opt_storage(self, spec: str) -> None:
        """register a storage server NAME=ENDPOINT (repeatable)"""
        self["storage"].append(spec)

    def postOptions(self) -> None:
        self.config = build_config(self)


#: Options ``build_config`` reads with ``number``: a TOML number, or a
#: string as on the command line (``replicas = "2"``).
_NUMBER_OPTIONS = frozenset(
    {
        "replicas", "checkpoint-mib", "upload-expiry-hours", "upload-retention-days",
        "drain-seconds", "max-connections-per-address", "max-connections",
        "max-sessions-per-user", "max-pending-uploads-per-user", "login-failures-per-address",
        "login-failures-per-user", "login-window-seconds", "http-header-timeout",
        "http-body-min-rate", "http-body-rate-window", "liveness-lease-seconds",
        "passive-ports-per-address",
    }
)  # fmt: skip

#: Repeatable options: one string, or a list of them.
_LIST_OPTIONS = frozenset({"storage", "require-tls-user"})


def _toml_type_problem(key: str, value: Any) -> str | None:
    """What a TOML value of option ``key`` should have been, or None.

    The command line gives every value as a string; TOML can give a number,
    a list or a table where a string belongs, which would otherwise fail
    far from the file (a traceback) or mean something else (``tls-cert =
    5`` opens file descriptor 5, ``public-address = 5`` is 0.0.0.5)."""
    if key in {f[0] for f in FrontendOptions.optFlags}:
        return None if isinstance(value, bool) else "true or false"
    if key in _LIST_OPTIONS:
        strings = isinstance(value, list) and all(isinstance(v, str) for v in value)
        return None if isinstance(value, str) or strings else "a string or a list of strings"
    if key in _NUMBER_OPTIONS:
        # true passes here (bool is an int) for ``number`` to refuse by its kind.
        return None if isinstance(value, int | float | str) else "a number"
    return None if isinstance(value, str) else "a string"


def _from_toml(path: str) -> dict[str, Any]:
    try:
        with open(path, "rb") as f:
            data = tomllib.load(f)
    except OSError as e:
        raise usage.UsageError(f"--config {path}: cannot read it: {e.strerror}") from e
    except tomllib.TOMLDecodeError as e:
        raise usage.UsageError(f"--config {path}: not valid TOML: {e}") from e
    # ``config`` itself is no option of the file: files do not include files.
    known = (
        {p[0] for p in FrontendOptions.optParameters if p[0] != "config"}
        | {f[0] for f in FrontendOptions.optFlags}
        | _LIST_OPTIONS
    )
    unknown = sorted(set(data) - known)
    if unknown:
        raise usage.UsageError(f"--config {path}: unknown options: {', '.join(unknown)}")
    for key, value in data.items():
        want = _toml_type_problem(key, value)
        if want is not None:
            raise usage.UsageError(f"--config {path}: {key} = {value!r}: expected {want}")
    return data


def checked_anonymous_root(root: str) -> str:
    """``root`` if it is a normalized virtual path (``/pub``), else a usage
    error saying why.  Every anonymous request joins it to the client's path
    (``paths.to_storage_path``), which refuses anything else: a front end
    that started with ``relative``, ``/-`` or ``/../x`` answered every
    anonymous request with HTTP 500 / FTP 451 and a critical traceback."""
    if is_virtual_path(root):
        return root
    try:
        normal = resolve("/", root)
    except PathError as e:
        why = str(e)
    else:
        why = f"write it {normal!r}" if root.startswith("/") else "it must start with '/'"
    raise usage.UsageError(
        f"--anonymous-root {root!r}: not a normalized absolute path such as /pub ({why})"
    )


def build_config(opts: usage.Options) -> FrontendConfig:
    """Merge the TOML file under the command line and check the result."""
    file = _from_toml(opts["config"]) if opts["config"] else {}

    def get(name: str, default=None):
        value = opts[name]
        if value in (None, []):
            value = file.get(name, default)
        return value

    def flag(name: str) -> bool:
        value = bool(opts[name]) or file.get(name, False)
        if not isinstance(value, bool):
            raise usage.UsageError(f"{name} must be true or false")
        return value

    def number(name: str, default, kind=int, least=1, above=None):
        """Option ``name`` as ``kind``, at least ``least`` (or more than ``above``)."""
        raw = get(name, default)
        what = "a whole number" if kind is int else "a number"
        try:
            if isinstance(raw, bool):  # TOML true would pass as 1
                raise ValueError(raw)
            if kind is int and isinstance(raw, float):  # TOML 2.5 would pass as 2
                raise ValueError(raw)
            value = kind(raw)
        except (TypeError, ValueError) as e:
            raise usage.UsageError(f"--{name} {raw!r}: expected {what}") from e
        if not math.isfinite(value):
            raise usage.UsageError(f"--{name} {raw!r}: expected {what}")
        if above is not None:
            if value <= above:
                raise usage.UsageError(f"--{name} must be more than {above}")
        elif value < least:
            raise usage.UsageError(f"--{name} must be at least {least}")
        return value

    def retention_days(value: float) -> float:
        """0 (for ever) or at least an hour: a shorter retention purges an
        upload while the transfer layer still retries its interruption, or
        a tus client asks by HEAD whether its last PATCH completed it, and
        they get NotFound (404) for an upload that did complete."""
        if 0 < value < MIN_UPLOAD_RETENTION_DAYS:
            raise usage.UsageError(
                f"--upload-retention-days {value:g}: must be 0 (keep finished uploads for ever) "
                f"or at least {MIN_UPLOAD_RETENTION_DAYS:.4g} (1 hour)"
            )
        return value

    missing = [n for n in ("name", "catalog", "secret-file") if not get(n)]
    if missing:
        raise usage.UsageError("missing options: " + ", ".join("--" + n for n in missing))
    storage_specs = get("storage", [])
    if isinstance(storage_specs, str):
        storage_specs = [storage_specs]
    storage = tuple(parse_storage(s) for s in storage_specs)
    names = [n for n, _ in storage]
    if len(set(names)) != len(names):
        raise usage.UsageError("--storage: the same storage server name is given twice")
    replicas = number("replicas", 2)
    if storage and replicas > len(storage):
        log.warn(
            "--replicas {replicas} with {n} --storage servers: unless other front ends "
            "registered more in the catalog, every file stays under-replicated",
            replicas=replicas,
            n=len(storage),
        )
    if not (get("ftp") or get("http") or get("ftps") or get("https")):
        raise usage.UsageError("give at least one of --ftp, --ftps, --http, --https")
    for option in ("ftp", "ftps", "http", "https"):
        spec = get(option)
        if spec and (problem := endpoint_problem(spec)) is not None:
            raise usage.UsageError(f"--{option} {spec!r}: not a server endpoint ({problem})")
    tls_cert, tls_key = get("tls-cert"), get("tls-key")
    require_tls = flag("require-tls")
    require_tls_users = get("require-tls-user", [])
    if isinstance(require_tls_users, str):
        require_tls_users = [require_tls_users]
    needs_cert = [
        o for o, on in (("--ftps", get("ftps")), ("--https", get("https")),
                        ("--require-tls", require_tls), ("--require-tls-user", require_tls_users))
        if on
    ]  # fmt: skip
    if needs_cert and not tls_cert:
        raise usage.UsageError(f"{', '.join(needs_cert)} needs --tls-cert")
    if (require_tls and get("http")) and not get("https"):
        raise usage.UsageError(
            "--require-tls refuses every login over plain --http: give --https too"
        )
    if tls_key and not tls_cert:
        raise usage.UsageError("--tls-key needs --tls-cert")
    if tls_cert:
        check_certificate(tls_cert, tls_key)
    catalog = get("catalog")
    if not catalog.startswith(("sqlite:///", "postgresql://", "postgres://")):
        raise usage.UsageError(
            f"--catalog {masked_url(catalog)!r}: expected sqlite:///... or postgresql://..."
        )
    passive = get("passive-ports")
    try:
        ports = parse_port_range(passive) if passive else None
        passive_ports = (ports.start, ports.stop - 1) if ports else None
    except ValueError as e:
        raise usage.UsageError(f"--passive-ports {passive!r}: {e}") from e
    per_address = None
    if get("passive-ports-per-address") is not None:
        if passive_ports is None:
            raise usage.UsageError(
                "--passive-ports-per-address needs --passive-ports (without a range "
                "any free port is used, and there is no share to keep)"
            )
        per_address = number("passive-ports-per-address", None)
    return FrontendConfig(
        name=get("name"),
        catalog=catalog,
        storage=storage,
        replicas=replicas,
        secret=read_secret(get("secret-file")),
        ftp=get("ftp"),
        ftps=get("ftps"),
        http=get("http"),
        passive_ports=passive_ports,
        passive_ports_per_address=per_address,
        public_address=public_ipv4(get("public-address")) if get("public-address") else None,
        checkpoint_mib=number("checkpoint-mib", 8),
        upload_expiry_hours=number("upload-expiry-hours", 24.0, float, above=0),
        upload_retention_days=retention_days(number("upload-retention-days", 7.0, float, least=0)),
        drain_seconds=number("drain-seconds", 30.0, float, least=0),
        https=get("https"),
        tls_cert=tls_cert,
        tls_key=tls_key,
        require_tls=require_tls,
        require_tls_users=tuple(require_tls_users),
        require_tls_session_reuse=flag("require-tls-session-reuse"),
        strict_tls_upload_eof=flag("strict-tls-upload-eof"),
        anonymous=flag("anonymous"),
        anonymous_root=checked_anonymous_root(get("anonymous-root", "/pub")),
        max_connections_per_address=number("max-connections-per-address", 256),
        max_connections=number("max-connections", 4096),
        max_sessions_per_user=number("max-sessions-per-user", 64),
        max_pending_uploads_per_user=number("max-pending-uploads-per-user", DEFAULT_PENDING_LIMIT),
        login_failures_per_address=number("login-failures-per-address", 10),
        login_failures_per_user=number("login-failures-per-user", 50),
        login_window_seconds=number("login-window-seconds", 300.0, float),
        http_header_timeout=number("http-header-timeout", 30.0, float),
        http_body_min_rate=number("http-body-min-rate", 500.0, float, least=0) or None,
        http_body_rate_window=number("http-body-rate-window", 30.0, float),
        liveness_lease_seconds=number(
            "liveness-lease-seconds", DEFAULT_TTL_SECONDS, float, least=MIN_TTL_SECONDS
        ),
    )
