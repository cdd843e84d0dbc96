"""wsfront options: TOML beneath the command line, clear errors."""

import json
import re

import pytest
import pytest_twisted
from twisted.python import usage

from wsfront.config import FrontendOptions


@pytest.fixture
def secret(tmp_path):
    path = tmp_path / "secret"
    path.write_text("s" * 32)
    return str(path)


def parse(*argv):
    opts = FrontendOptions()
    opts.parseOptions(list(argv))
    return opts.config


def test_command_line_alone_is_enough(secret):
    cfg = parse(
        "--name", "fe1", "--catalog", "sqlite:///tmp/c.sqlite", "--secret-file", secret,
        "--ftp", "tcp:2121", "--storage", "s1=tcp:127.0.0.1:7001",
        "--storage", "s2=tcp:127.0.0.1:7002", "--replicas", "2", "--passive-ports", "30000-30010",
    )  # fmt: skip
    assert cfg.name == "fe1"
    assert cfg.storage == (("s1", "tcp:127.0.0.1:7001"), ("s2", "tcp:127.0.0.1:7002"))
    assert cfg.passive_ports == (30000, 30010)
    assert cfg.secret == b"s" * 32


def test_command_line_wins_over_toml(tmp_path, secret):
    toml = tmp_path / "fe.toml"
    toml.write_text(
        'name = "from-file"\ncatalog = "sqlite:///x.sqlite"\nhttp = "tcp:8080"\n'
        f'secret-file = "{secret}"\nstorage = ["s1=tcp:h:1"]\nreplicas = 3\n'
    )
    cfg = parse("--config", str(toml), "--name", "from-cli")
    assert cfg.name == "from-cli"
    assert cfg.replicas == 3
    assert cfg.http == "tcp:8080"
    assert cfg.storage == (("s1", "tcp:h:1"),)


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--catalog", "sqlite:///x"], "missing options: --name"),
        (["--name", "a", "--catalog", "mysql://x", "--ftp", "tcp:1"], "expected sqlite"),
        (["--name", "a", "--catalog", "sqlite:///x"], "at least one of"),
        (
            ["--name", "a", "--catalog", "sqlite:///x", "--ftp", "tcp:1", "--storage", "bad"],
            "NAME=ENDPOINT",
        ),
        (
            ["--name", "a", "--catalog", "sqlite:///x", "--ftp", "tcp:1", "--replicas", "x"],
            "whole number",
        ),
        (
            ["--name", "a", "--catalog", "sqlite:///x", "--ftp", "tcp:1", "--passive-ports", "9-1"],
            "--passive-ports",
        ),
    ],
)
def test_bad_options_name_the_problem(secret, argv, message):
    with pytest.raises(usage.UsageError, match=message):
        parse(*argv, "--secret-file", secret)


def test_unreadable_secret_file_is_a_clear_error(tmp_path):
    with pytest.raises(usage.UsageError, match="cannot read"):
        parse("--name", "a", "--catalog", "sqlite:///x", "--ftp", "tcp:1",
              "--secret-file", str(tmp_path / "nope"))  # fmt: skip


def test_unknown_toml_option_is_refused(tmp_path, secret):
    toml = tmp_path / "fe.toml"
    toml.write_text('colour = "blue"\n')
    with pytest.raises(usage.UsageError, match="unknown options: colour"):
        parse("--config", str(toml))


def test_require_tls_with_plain_http_needs_https_too(tmp_path, secret):
    from tests.tls_support import make_certificate

    cert, key = make_certificate(tmp_path)
    base = ["--name", "a", "--catalog", "sqlite:///x", "--secret-file", secret,
            "--tls-cert", str(cert), "--tls-key", str(key), "--require-tls"]  # fmt: skip
    with pytest.raises(usage.UsageError, match="give --https too"):
        parse(*base, "--http", "tcp:1")
    cfg = parse(*base, "--http", "tcp:1", "--https", "tcp:2")
    assert cfg.require_tls and cfg.https == "tcp:2"


def test_http_slow_client_limits_come_from_the_options_and_reach_the_site(tmp_path, secret):
    from wsfront.http.tls import site_settings

    base = ["--name", "a", "--catalog", "sqlite:///x", "--secret-file", secret, "--http", "tcp:1"]
    cfg = parse(*base)
    settings = site_settings(cfg)
    assert (settings.header_timeout, settings.body_min_rate, settings.body_rate_window) == (
        30.0,
        500.0,
        30.0,
    )
    toml = tmp_path / "fe.toml"
    toml.write_text("http-header-timeout = 10\nhttp-body-rate-window = 5\n")
    cfg = parse(*base, "--config", str(toml), "--http-body-min-rate", "0")
    settings = site_settings(cfg)
    assert (settings.header_timeout, settings.body_min_rate, settings.body_rate_window) == (
        10.0,
        None,
        5.0,
    )
    with pytest.raises(usage.UsageError, match="http-header-timeout must be at least 1"):
        parse(*base, "--http-header-timeout", "0")


BASE = ["--name", "a", "--catalog", "sqlite:///x", "--ftp", "tcp:1"]


@pytest.mark.parametrize(
    ("option", "value", "message"),
    [
        ("upload-expiry-hours", "abc", "expected a number"),
        ("upload-expiry-hours", "-1", "more than 0"),
        ("upload-expiry-hours", "0", "more than 0"),
        ("upload-expiry-hours", "nan", "expected a number"),
        ("checkpoint-mib", "abc", "whole number"),
        ("checkpoint-mib", "0", "at least 1"),
        ("checkpoint-mib", "-1", "at least 1"),
        ("drain-seconds", "-3", "at least 0"),
        ("drain-seconds", "x", "expected a number"),
        ("replicas", "0", "at least 1"),
        ("public-address", "not_an_ip", "not an IPv4 address or a host name"),
        ("public-address", "::1", "IPv4"),
        ("public-address", "300.1.1.1", "not an IPv4 address"),
        ("http", "tcp:notaport", "not a server endpoint"),
        ("ftps", "nonsense:1", "not a server endpoint"),
        ("storage", "s1=garbage:x", "--storage s1=garbage:x: bad endpoint"),
        ("http", "tcp:99999", "port 99999 is not in 0-65535"),
        ("https", "tcp:-1", "port -1 is not in 0-65535"),
        ("storage", "s1=tcp:h:70000", "port 70000 is not in 0-65535"),
        ("storage", "s1=tls:h:70000", "port 70000 is not in 0-65535"),
        ("max-pending-uploads-per-user", "0", "at least 1"),
        ("max-pending-uploads-per-user", "-5", "at least 1"),
        ("max-pending-uploads-per-user", "2.5", "whole number"),
        ("max-pending-uploads-per-user", "many", "whole number"),
        ("liveness-lease-seconds", "2.5", "at least 3"),
        ("liveness-lease-seconds", "-30", "at least 3"),
        ("liveness-lease-seconds", "inf", "expected a number"),
        ("liveness-lease-seconds", "soon", "expected a number"),
    ],
)
def test_bad_values_are_usage_errors_on_the_command_line_and_in_toml(
    tmp_path, secret, option, value, message
):
    cert = ["--tls-cert", "x"] if option == "ftps" else []
    with pytest.raises(usage.UsageError, match=message):
        parse(*BASE, f"--{option}", value, "--secret-file", secret, *cert)
    toml = tmp_path / "fe.toml"
    toml.write_text(f'{option} = "{value}"\n')
    with pytest.raises(usage.UsageError, match=message):
        parse(*BASE, "--config", str(toml), "--secret-file", secret, *cert)


def test_toml_numbers_that_are_booleans_are_refused(tmp_path, secret):
    toml = tmp_path / "fe.toml"
    toml.write_text("checkpoint-mib = true\n")
    with pytest.raises(usage.UsageError, match="whole number"):
        parse(*BASE, "--config", str(toml), "--secret-file", secret)


def test_good_values_pass(secret):
    cfg = parse(*BASE, "--secret-file", secret, "--upload-expiry-hours", "0.5",
                "--checkpoint-mib", "1", "--drain-seconds", "0",
                "--public-address", "192.0.2.7")  # fmt: skip
    assert (cfg.upload_expiry_hours, cfg.checkpoint_mib, cfg.drain_seconds) == (0.5, 1, 0.0)
    assert cfg.public_address == "192.0.2.7"


def test_a_public_host_name_is_resolved_once_at_start(secret):
    cfg = parse(*BASE, "--secret-file", secret, "--public-address", "localhost")
    assert cfg.public_address == "127.0.0.1"


def test_more_replicas_than_storage_servers_is_warned_about(secret):
    from twisted.logger import globalLogPublisher

    events = []
    globalLogPublisher.addObserver(events.append)
    try:
        parse(*BASE, "--secret-file", secret, "--replicas", "5",
              *[a for i in (1, 2, 3) for a in ("--storage", f"s{i}=tcp:h:{i}")])  # fmt: skip
    finally:
        globalLogPublisher.removeObserver(events.append)
    warned = [e for e in events if "under-replicated" in e.get("log_format", "")]
    assert warned and warned[0]["replicas"] == 5 and warned[0]["n"] == 3


def test_max_pending_uploads_per_user_comes_from_the_options_and_reaches_the_transfers(
    tmp_path, secret
):
    from wsfront.service import transfer_settings

    base = [*BASE, "--secret-file", secret]
    assert transfer_settings(parse(*base)).max_pending_uploads_per_user == 1000
    settings = transfer_settings(parse(*base, "--max-pending-uploads-per-user", "7"))
    assert settings.max_pending_uploads_per_user == 7
    toml = tmp_path / "fe.toml"
    toml.write_text("max-pending-uploads-per-user = 5\n")
    assert transfer_settings(parse(*base, "--config", str(toml))).max_pending_uploads_per_user == 5
    wins = parse(*base, "--config", str(toml), "--max-pending-uploads-per-user", "9")
    assert transfer_settings(wins).max_pending_uploads_per_user == 9
    # The other transfer options still arrive alongside.
    other = transfer_settings(parse(*base, "--checkpoint-mib", "2", "--max-sessions-per-user", "3"))
    assert (other.checkpoint_bytes, other.max_sessions_per_user) == (2 << 20, 3)


def test_a_toml_fraction_for_a_whole_number_option_is_refused(tmp_path, secret):
    toml = tmp_path / "fe.toml"
    toml.write_text("max-pending-uploads-per-user = 2.5\n")
    with pytest.raises(usage.UsageError, match=r"per-user 2\.5: expected a whole number"):
        parse(*BASE, "--config", str(toml), "--secret-file", secret)


def test_the_liveness_lease_life_comes_from_the_options_and_reaches_maintenance(tmp_path, secret):
    from wsfront.maintenance.service import maintenance_settings

    base = [*BASE, "--secret-file", secret]
    assert maintenance_settings(parse(*base)).liveness_ttl == 30.0
    assert maintenance_settings(parse(*base, "--liveness-lease-seconds", "90")).liveness_ttl == 90
    toml = tmp_path / "fe.toml"
    toml.write_text("liveness-lease-seconds = 12.5\n")
    assert maintenance_settings(parse(*base, "--config", str(toml))).liveness_ttl == 12.5
    wins = parse(*base, "--config", str(toml), "--liveness-lease-seconds", "3")
    assert maintenance_settings(wins).liveness_ttl == 3.0
    # The maintenance lease's life follows, down to a floor that outlasts a
    # catalog lock wait (a frozen holder's uploads are interrupted as soon).
    assert maintenance_settings(wins).lease_ttl == 20.0
    assert maintenance_settings(parse(*base, "--liveness-lease-seconds", "90")).lease_ttl == 90


@pytest_twisted.ensureDeferred
async def test_a_running_front_end_holds_its_liveness_lease_for_the_configured_time(tmp_path):
    import time

    from twisted.internet import reactor

    from wsfront.catalog import open_catalog
    from wsfront.config import FrontendConfig
    from wsfront.service import FrontendService

    url = f"sqlite:///{tmp_path / 'catalog.sqlite'}"
    config = FrontendConfig(
        name="fe", catalog=url, storage=(), replicas=1, secret=b"s" * 32,
        http="tcp:0:interface=127.0.0.1", liveness_lease_seconds=600.0,
    )  # fmt: skip
    fe = FrontendService(reactor, config)
    fe.startService()
    try:
        await fe.ready
        before = time.time()
        cat = open_catalog(reactor, url)
        try:
            leases = await cat.list_leases("front-end:fe")
        finally:
            await cat.close()
        [(owner, expires_at)] = leases.values()
        assert owner == "fe" and before + 500 < expires_at <= before + 600
    finally:
        await fe.stopService()


def test_require_tls_session_reuse_is_off_unless_given(tmp_path, secret):
    from tests.tls_support import make_certificate

    cert, key = make_certificate(tmp_path)
    base = ["--name", "a", "--catalog", "sqlite:///x", "--secret-file", secret,
            "--tls-cert", str(cert), "--tls-key", str(key), "--ftp", "tcp:1"]  # fmt: skip
    assert not parse(*base).require_tls_session_reuse
    assert parse(*base, "--require-tls-session-reuse").require_tls_session_reuse
    assert not parse(*base).strict_tls_upload_eof
    assert parse(*base, "--strict-tls-upload-eof").strict_tls_upload_eof


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ("storage = [1]", "storage = \\[1\\]: expected a string or a list of strings"),
        ("passive-ports = [30000, 30100]", "passive-ports = .*: expected a string"),
        ("tls-cert = 5", "tls-cert = 5: expected a string"),
        ("public-address = 5", "public-address = 5: expected a string"),
        ("anonymous-root = 5", "anonymous-root = 5: expected a string"),
        ('anonymous = "yes"', "anonymous = 'yes': expected true or false"),
        ("max-connections = [1]", "max-connections = \\[1\\]: expected a number"),
        ('config = "other.toml"', "unknown options: config"),
    ],
)
def test_toml_values_of_the_wrong_type_are_usage_errors_naming_the_file(
    tmp_path, secret, line, message
):
    """A list, number or table where the command line would give a string
    is refused in one line, not a traceback or a different meaning
    (``tls-cert = 5`` would read file descriptor 5)."""
    toml = tmp_path / "fe.toml"
    toml.write_text(line + "\n")
    with pytest.raises(usage.UsageError, match=f"--config {re.escape(str(toml))}: {message}"):
        parse(*BASE, "--config", str(toml), "--secret-file", secret)


@pytest_twisted.ensureDeferred
async def test_a_storage_endpoint_that_changes_a_registered_one_is_warned_about(tmp_path):
    """--storage re-registers a server for the whole cluster: a moved
    server, or a typo on one front end that every other then follows."""
    from twisted.internet import reactor
    from twisted.logger import LogLevel, formatEvent, globalLogPublisher

    from wsfront.config import FrontendConfig
    from wsfront.service import FrontendService

    url = f"sqlite:///{tmp_path / 'catalog.sqlite'}"
    events: list[dict] = []
    globalLogPublisher.addObserver(events.append)
    try:
        for endpoint in ("tcp:127.0.0.1:7001", "tcp:127.0.0.1:7001", "tcp:127.0.0.1:7999"):
            config = FrontendConfig(
                name="fe", catalog=url, storage=(("s1", endpoint),), replicas=1,
                secret=b"s" * 32, http="tcp:0:interface=127.0.0.1",
            )  # fmt: skip
            fe = FrontendService(reactor, config)
            fe.startService()
            try:
                await fe.ready
            finally:
                await fe.stopService()
    finally:
        globalLogPublisher.removeObserver(events.append)
    said = [
        formatEvent(e)
        for e in events
        if e.get("log_level") is LogLevel.warn and "was registered at" in formatEvent(e)
    ]
    assert said == [
        "--storage s1=tcp:127.0.0.1:7999: s1 was registered at tcp:127.0.0.1:7001; "
        "the catalog now says tcp:127.0.0.1:7999 for every front end and the CLI"
    ]


@pytest.mark.parametrize(
    ("root", "message"),
    [
        ("relative", "must start with '/'"),
        ("/-", "reserved"),
        ("/../x", "outside your root"),
        ("/pub/", "write it '/pub'"),
        ("", "must start with '/'"),
    ],
)
def test_an_anonymous_root_that_is_no_normalized_path_is_refused_at_start(
    tmp_path, secret, root, message
):
    """Every anonymous request joins the root to its path, which refuses
    anything but a normalized one: such a root started, then answered each
    anonymous request with a 500 (FTP 451) and a critical traceback."""
    with pytest.raises(usage.UsageError, match=f"--anonymous-root {re.escape(repr(root))}.*"):
        parse(*BASE, "--anonymous", "--anonymous-root", root, "--secret-file", secret)
    toml = tmp_path / "fe.toml"
    toml.write_text(f'anonymous-root = "{root}"\n')
    with pytest.raises(usage.UsageError, match=re.escape(message)):
        parse(*BASE, "--config", str(toml), "--secret-file", secret)


def test_a_normalized_anonymous_root_is_kept(secret):
    assert parse(*BASE, "--anonymous-root", "/pub/a b", "--secret-file", secret).anonymous_root == (
        "/pub/a b"
    )
    assert parse(*BASE, "--anonymous-root", "/", "--secret-file", secret).anonymous_root == "/"


def test_passive_ports_per_address_defaults_to_half_the_range_and_reaches_the_ftp_share(
    tmp_path, secret
):
    from wsfront.ftp.factory import FTPFactory, settings_of

    base = [*BASE, "--secret-file", secret, "--passive-ports", "32100-32150"]
    cfg = parse(*base)
    assert cfg.passive_ports_per_address is None
    share = FTPFactory(None, None, None, settings_of(cfg)).passive_share
    assert (share.size, share.per_address) == (51, 25)
    cfg = parse(*base, "--passive-ports-per-address", "4")
    share = FTPFactory(None, None, None, settings_of(cfg)).passive_share
    assert share.per_address == 4
    toml = tmp_path / "fe.toml"
    toml.write_text("passive-ports-per-address = 7\n")
    assert parse(*base, "--config", str(toml)).passive_ports_per_address == 7
    with pytest.raises(usage.UsageError, match="passive-ports-per-address must be at least 1"):
        parse(*base, "--passive-ports-per-address", "0")
    with pytest.raises(usage.UsageError, match="needs --passive-ports"):
        parse(*BASE, "--secret-file", secret, "--passive-ports-per-address", "4")
    # No range: any free port, and no share to keep.
    cfg = parse(*BASE, "--secret-file", secret)
    assert FTPFactory(None, None, None, settings_of(cfg)).passive_share is None


#: Names ``wsstorage --name`` refuses (and one it takes), with the trailing
#: line end its old ``re.match`` let through.
STORAGE_NAMES = [
    ("s 1", False), ("s/1", False), ("-s1", False), ("_s1", False), ("s1\n", False),
    ("s\u00e91", False), ("s" * 129, False), ("", False), ("s1", True), ("S-1_b", True),
    ("s" * 128, True),
]  # fmt: skip


@pytest.mark.parametrize(("name", "valid"), STORAGE_NAMES)
def test_wsfront_takes_exactly_the_storage_names_wsstorage_takes(tmp_path, secret, name, valid):
    """A name one accepts and the other refuses is a registry entry no
    server can ever answer to (its handshake announces its --name)."""
    from wsstorage.service import Options as StorageOptions

    storage = ["--listen", "tcp:0", "--data", str(tmp_path / "d"), "--name", name]
    storage += ["--secret-file", str(tmp_path / "secret")]
    spec = f"{name}=tcp:127.0.0.1:7001"
    if valid:
        StorageOptions().parseOptions(storage)
        assert parse(*BASE, "--storage", spec, "--secret-file", secret).storage == (
            (name, "tcp:127.0.0.1:7001"),
        )
        return
    with pytest.raises(usage.UsageError, match="--name"):
        StorageOptions().parseOptions(storage)
    if not name:
        return  # "=EP" is refused as no NAME=ENDPOINT at all
    message = re.escape(f"{name!r} is not a storage server name: use letters, digits")
    with pytest.raises(usage.UsageError, match=message):
        parse(*BASE, "--storage", spec, "--secret-file", secret)
    toml = tmp_path / "fe.toml"
    toml.write_text(f"storage = [{json.dumps(spec)}]\n")
    with pytest.raises(usage.UsageError, match=message):
        parse(*BASE, "--config", str(toml), "--secret-file", secret)
