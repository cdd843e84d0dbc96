"""``--upload-retention-days``: how long GC keeps finished uploads' rows,
from the command line or TOML to the maintenance service's GC settings."""

import pytest
from twisted.python import usage

from wsfront.config import FrontendOptions
from wsfront.maintenance.gc import GCSettings
from wsfront.maintenance.service import maintenance_settings

BASE = ["--name", "a", "--catalog", "sqlite:///x", "--ftp", "tcp:1"]


@pytest.fixture
def base(tmp_path):
    path = tmp_path / "secret"
    path.write_text("s" * 32)
    return [*BASE, "--secret-file", str(path)]


def parse(*argv):
    opts = FrontendOptions()
    opts.parseOptions(list(argv))
    return opts.config


def test_a_week_by_default_as_gc_has_it(base):
    cfg = parse(*base)
    assert cfg.upload_retention_days == 7.0
    gc = maintenance_settings(cfg).gc
    assert gc.upload_retention_seconds == 7 * 86400 == GCSettings().upload_retention_seconds


def test_the_option_and_toml_reach_gc(tmp_path, base):
    cfg = parse(*base, "--upload-retention-days", "0.5")
    assert maintenance_settings(cfg).gc.upload_retention_seconds == 43200
    toml = tmp_path / "fe.toml"
    toml.write_text("upload-retention-days = 30\n")
    assert maintenance_settings(
        parse(*base, "--config", str(toml))
    ).gc.upload_retention_seconds == (30 * 86400)
    wins = parse(*base, "--config", str(toml), "--upload-retention-days", "2")
    assert maintenance_settings(wins).gc.upload_retention_seconds == 2 * 86400


def test_zero_keeps_finished_uploads_for_ever(base):
    cfg = parse(*base, "--upload-retention-days", "0")
    assert cfg.upload_retention_days == 0
    assert maintenance_settings(cfg).gc.upload_retention_seconds is None


def test_an_hour_is_the_shortest_retention(base):
    hour = parse(*base, "--upload-retention-days", repr(1 / 24))
    assert maintenance_settings(hour).gc.upload_retention_seconds == pytest.approx(3600)
    with pytest.raises(usage.UsageError, match=r"at least 0\.04167 \(1 hour\)"):
        parse(*base, "--upload-retention-days", "0.0001")


@pytest.mark.parametrize(
    ("value", "message"),
    [("abc", "expected a number"), ("-1", "at least 0"), ("0.04", "must be 0 .* or at least"),
     ("inf", "expected a number")],
)  # fmt: skip
def test_a_bad_retention_is_refused_in_one_line(base, value, message):
    with pytest.raises(usage.UsageError, match=f"upload-retention-days.*{message}"):
        parse(*base, "--upload-retention-days", value)
