"""Each atheris harness in ``fuzz/`` runs for a bounded number of inputs.

A harness exits non-zero when an invariant breaks or anything unexpected
escapes its target; the crashing input lands in pytest's tmp_path.  Without
atheris installed the tests skip (developer machine) or fail (CI=true, see
``tests.support.missing``): ``pip install atheris``.
"""

from __future__ import annotations

import subprocess
import sys

import pytest

from tests.support import REPO, missing, python_env

HARNESSES = ["fuzz_ftp_parser", "fuzz_http_ranges", "fuzz_paths", "fuzz_framing"]
RUNS = 3000


def _require_atheris() -> None:
    try:
        import atheris  # noqa: F401
    except ImportError:
        missing("atheris is not installed (pip install atheris)")


@pytest.mark.parametrize("harness", HARNESSES)
def test_harness_finds_no_crash_in_a_bounded_run(harness, tmp_path):
    _require_atheris()
    argv = [
        sys.executable,
        str(REPO / "fuzz" / f"{harness}.py"),
        f"-runs={RUNS}",
        "-max_total_time=20",
        "-seed=1",
        f"-artifact_prefix={tmp_path}/",
    ]
    done = subprocess.run(
        argv, cwd=tmp_path, env=python_env(), capture_output=True, text=True, timeout=90
    )
    tail = "\n".join((done.stdout + done.stderr).splitlines()[-40:])
    assert done.returncode == 0, f"{harness} crashed:\n{tail}"
    assert "Done " in done.stderr, tail  # libFuzzer's summary: the run ended normally
    assert not list(tmp_path.glob("crash-*")), tail


def test_a_harness_reports_a_broken_invariant(tmp_path):
    """The harnesses really fail on a violation: a throwaway one that asserts
    on every input must exit non-zero and leave its input behind."""
    _require_atheris()
    broken = tmp_path / "fuzz_broken.py"
    broken.write_text(
        "import sys\n"
        f"sys.path.insert(0, {str(REPO / 'fuzz')!r})\n"
        "import _harness\n"
        "def test_one_input(data):\n"
        "    assert len(data) < 0, 'always broken'\n"
        "_harness.run(test_one_input, ())\n"
    )
    done = subprocess.run(
        [sys.executable, str(broken), "-runs=10", f"-artifact_prefix={tmp_path}/"],
        cwd=tmp_path,
        env=python_env(),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode != 0
    assert "always broken" in done.stdout + done.stderr
    assert list(tmp_path.glob("crash-*"))
