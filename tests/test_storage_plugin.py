"""The twistd plugin is found from a checkout (PYTHONPATH at the repo)."""

from __future__ import annotations

import socket
import subprocess

import pytest
import pytest_twisted
from twisted.internet import reactor
from twisted.python import usage

from tests.support import TWISTD, python_env, twistd_argv
from wsfront.local import LocalClusterService, LocalOptions
from wsstorage.blobstore import DROP_BEHIND
from wsstorage.service import Options, StorageService


def test_twistd_help_lists_the_wsstorage_plugin() -> None:
    out = subprocess.run(
        [*TWISTD, "--help"], env=python_env(), capture_output=True, text=True, timeout=60
    )
    assert out.returncode == 0, out.stderr
    lines = [line.split() for line in out.stdout.splitlines()]
    assert ["wsstorage", "a", "wsfs", "storage", "server"] in lines


def test_wsstorage_help_describes_its_options() -> None:
    out = subprocess.run(
        [*TWISTD, "wsstorage", "--help"],
        env=python_env(),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 0, out.stderr
    for option in ("--listen=", "--data=", "--name=", "--secret-file="):
        assert option in out.stdout


def test_wsstorage_read_ahead_options_are_parsed_and_checked(tmp_path) -> None:
    base = ["--listen", "tcp:0", "--data", str(tmp_path / "d"), "--name", "s1"]
    base += ["--secret-file", str(tmp_path / "secret")]
    opts = Options()
    opts.parseOptions([*base, "--read-ahead-kib", "256", "--read-batches", "1"])
    assert (opts["read-ahead-kib"], opts["read-batches"]) == (256, 1)
    defaults = Options()
    defaults.parseOptions(base)
    assert (defaults["read-ahead-kib"], defaults["read-batches"]) == (1024, 2)
    for bad in (["--read-batches", "0"], ["--read-ahead-kib", "x"], ["--read-ahead-kib", "1"]):
        with pytest.raises(usage.UsageError):
            Options().parseOptions([*base, *bad])


def _base(tmp_path) -> list[str]:
    base = ["--listen", "tcp:0:interface=127.0.0.1", "--data", str(tmp_path / "d")]
    return [*base, "--name", "s1", "--secret-file", str(tmp_path / "secret")]


def test_wsstorage_drop_behind_option_is_parsed_and_checked(tmp_path) -> None:
    defaults = Options()
    defaults.parseOptions(_base(tmp_path))
    assert defaults["drop-behind-kib"] == DROP_BEHIND // 1024 == 0
    off = Options()
    off.parseOptions([*_base(tmp_path), "--drop-behind-kib", "0"])
    assert off["drop-behind-kib"] == 0
    for bad in ("-1", "x"):
        with pytest.raises(usage.UsageError):
            Options().parseOptions([*_base(tmp_path), "--drop-behind-kib", bad])


@pytest.mark.parametrize(
    ("option", "spec"),
    [
        ("listen", "tcp:notaport"),
        ("metrics", "nosuch:1"),
        # Twisted parses these; the listen failed later, an OverflowError traceback.
        ("listen", "tcp:99999"),
        ("metrics", "tcp:65536:interface=127.0.0.1"),
    ],
)
def test_wsstorage_refuses_a_malformed_endpoint_before_touching_the_data(
    tmp_path, option, spec
) -> None:
    """A usage error naming the option, not a traceback after the data
    directory (and a secret file) were made."""
    args = _base(tmp_path)
    if option == "listen":
        args[1] = spec
    else:
        args += ["--metrics", spec]
    with pytest.raises(usage.UsageError, match=f"--{option} '{spec}': not a server endpoint"):
        Options().parseOptions(args)
    assert list(tmp_path.iterdir()) == []


@pytest_twisted.ensureDeferred
async def test_wsstorage_service_opens_its_store_with_the_drop_behind_setting(tmp_path) -> None:
    for given, expected in ((None, DROP_BEHIND), ("0", 0), ("4096", 4 << 20)):
        opts = Options()
        extra = [] if given is None else ["--drop-behind-kib", given]
        opts.parseOptions([*_base(tmp_path), *extra])
        service = StorageService(reactor, opts)
        service.startService()
        await service._starting
        try:
            assert service.running_server.store.drop_behind == expected
        finally:
            await service.stopService()


def test_wslocal_drop_behind_option_is_parsed_and_checked() -> None:
    assert LocalOptions()["drop-behind-kib"] == str(DROP_BEHIND // 1024)
    opts = LocalOptions()
    opts.parseOptions(["--drop-behind-kib", "0"])
    assert opts["drop-behind-kib"] == 0
    for bad in ("-1", "x"):
        with pytest.raises(usage.UsageError):
            LocalOptions().parseOptions(["--drop-behind-kib", bad])


def test_wslocal_opens_its_stores_with_the_drop_behind_setting(tmp_path) -> None:
    for given, expected in ((None, DROP_BEHIND), ("1024", 1 << 20)):
        opts = LocalOptions()
        extra = [] if given is None else ["--drop-behind-kib", given]
        opts.parseOptions(["--data", str(tmp_path / f"w{given}"), *extra])
        store = LocalClusterService(reactor, opts).open_store("s1")
        try:
            assert store.drop_behind == expected
        finally:
            store.close()


@pytest.mark.slow
def test_wsstorage_that_cannot_listen_exits_nonzero_with_a_clear_message(tmp_path) -> None:
    """A supervisor must see a failed start as a failure, as with wsfront."""
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen(1)
        port = busy.getsockname()[1]
        args = _base(tmp_path)
        args[1] = f"tcp:{port}:interface=127.0.0.1"
        proc = subprocess.run(
            twistd_argv("wsstorage", *args),
            env=python_env(),
            capture_output=True,
            text=True,
            timeout=60,
            cwd=tmp_path,
        )
    assert proc.returncode == 1, proc.stdout + proc.stderr
    # twistd logs stderr's writes to stdout.
    assert "wsstorage: cannot start:" in proc.stdout + proc.stderr
    assert "Address already in use" in proc.stdout + proc.stderr
    # The operator's environment, not a bug: one line, as wsfront says it.
    assert "Traceback" not in proc.stdout + proc.stderr


@pytest.mark.slow
def test_wsstorage_with_a_reserve_larger_than_its_disk_exits_nonzero_saying_so(tmp_path) -> None:
    proc = subprocess.run(
        twistd_argv("wsstorage", *_base(tmp_path), "--reserve", "1048576T"),
        env=python_env(),
        capture_output=True,
        text=True,
        timeout=60,
        cwd=tmp_path,
    )
    out = proc.stdout + proc.stderr
    assert proc.returncode == 1, out
    assert "wsstorage: cannot start:" in out and "is the whole disk or more" in out, out
    assert "Traceback" not in out


@pytest.mark.slow
def test_wsstorage_whose_metrics_port_is_taken_exits_nonzero_saying_so(tmp_path) -> None:
    """--metrics on a taken port was a silent start without metrics: a
    supervisor (and whoever scrapes it) must see it as a failed start, as
    a taken --listen port is."""
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen(1)
        port = busy.getsockname()[1]
        proc = subprocess.run(
            twistd_argv(
                "wsstorage", *_base(tmp_path), "--metrics", f"tcp:{port}:interface=127.0.0.1"
            ),
            env=python_env(),
            capture_output=True,
            text=True,
            timeout=60,
            cwd=tmp_path,
        )
    out = proc.stdout + proc.stderr
    assert proc.returncode == 1, out
    assert "wsstorage: cannot start:" in out and "Address already in use" in out, out
    assert "Traceback" not in out


def test_wsstorage_refuses_a_negative_or_non_finite_scrub_interval(tmp_path) -> None:
    """A negative, infinite or NaN interval is a usage error, before the
    data directory is made; a real ``twistd -n wsstorage`` so refused
    exits 1 and says it.  (0 is accepted, deprecated: see below.)"""
    for bad in ("-1", "inf", "nan"):
        with pytest.raises(usage.UsageError, match="--scrub-interval-hours must"):
            Options().parseOptions([*_base(tmp_path), "--scrub-interval-hours", bad])
    assert list(tmp_path.iterdir()) == []
    opts = Options()
    opts.parseOptions([*_base(tmp_path), "--scrub-interval-hours", "0.5"])
    assert opts["scrub-interval-hours"] == 0.5
    run = subprocess.run(
        [*TWISTD, "-n", "--pidfile=", "wsstorage", *_base(tmp_path), "--scrub-interval-hours",
         "-1"],
        env=python_env(), capture_output=True, text=True, timeout=60, cwd=tmp_path,
    )  # fmt: skip
    assert run.returncode == 1, run.stdout + run.stderr
    # twistd prints a plugin's usage error on stdout.
    said = run.stdout + run.stderr
    assert "--scrub-interval-hours must not be negative" in said
    assert not (tmp_path / "d").exists()


async def _scrub_said(tmp_path, *args: str) -> tuple[list[str], bool]:
    """Start a storage service with ``args``; fire with what it logged of
    scrub, and whether it scrubs."""
    from twisted.logger import formatEvent, globalLogPublisher

    events: list[dict] = []
    opts = Options()
    opts.parseOptions([*_base(tmp_path), *args])
    service = StorageService(reactor, opts)
    globalLogPublisher.addObserver(events.append)
    try:
        service.startService()
        await service._starting
        scrubbing = service.scrubber is not None
    finally:
        globalLogPublisher.removeObserver(events.append)
        await service.stopService()
    said = [formatEvent(e).replace(str(tmp_path), "<tmp>") for e in events]
    return [line for line in said if "scrub" in line], scrubbing


@pytest_twisted.ensureDeferred
async def test_a_scrub_interval_of_0_still_turns_scrub_off_with_a_deprecation_warning(
    tmp_path,
) -> None:
    """``--scrub-interval-hours 0`` turned scrubbing off; deployments that
    used it must still start in a rolling upgrade (it was briefly refused),
    told loudly that the supported switch is ``--scrub-mib-per-second 0``."""
    said, scrubbing = await _scrub_said(tmp_path, "--scrub-interval-hours", "0")
    assert not scrubbing
    assert said == [
        "DEPRECATED: --scrub-interval-hours 0 turns scrubbing off for now, but a later release "
        "will refuse it; use --scrub-mib-per-second 0, the supported switch, to turn "
        "scrubbing off",
        "scrub is off (--scrub-interval-hours 0): no background checksum passes",
    ], said


@pytest_twisted.ensureDeferred
async def test_wsstorage_says_at_start_whether_it_scrubs_and_how_often(tmp_path) -> None:
    """An operator reading the log knows whether damage is looked for."""
    from twisted.logger import formatEvent, globalLogPublisher

    said = {}
    for pace, expected in (
        ("0", "scrub is off (--scrub-mib-per-second 0): no background checksum passes"),
        ("8", "scrub: a checksum pass now and every 12 h, at 8 MiB/s"),
    ):
        events: list[dict] = []
        (tmp_path / pace).mkdir()
        opts = Options()
        opts.parseOptions([*_base(tmp_path / pace), "--scrub-mib-per-second", pace,
                           "--scrub-interval-hours", "12"])  # fmt: skip
        service = StorageService(reactor, opts)
        globalLogPublisher.addObserver(events.append)
        try:
            service.startService()
            await service._starting
            scrubbing = service.scrubber is not None
        finally:
            globalLogPublisher.removeObserver(events.append)
            await service.stopService()
        said[pace] = [formatEvent(e) for e in events if "scrub" in formatEvent(e)]
        assert said[pace] == [expected], said
        assert scrubbing == (pace != "0")
