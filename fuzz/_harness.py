"""Shared start-up of the atheris harnesses in this directory.

Each ``fuzz_<target>.py`` defines ``test_one_input(data: bytes)`` that
raises ``AssertionError`` when an invariant breaks (anything else it lets
escape is a crash too) and calls ``run(test_one_input)``.  Run one as
``python fuzz/fuzz_ftp_parser.py -runs=100000`` (libFuzzer flags; add a
corpus directory to keep what it finds).  ``tests/test_fuzz_bounded.py``
runs each for a bounded number of runs.

A crash found here becomes a regression test in ``tests/test_fuzz_*.py``
(an ``xfail(strict=True)`` until the owner fixes it).  Set
``WSFS_FUZZ_KNOWN=allow`` to let the harness skip over bugs that already
have such a test (listed per harness in ``KNOWN``), so the fuzzer keeps
looking for new ones.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

import atheris  # noqa: E402


def allow_known() -> bool:
    """Whether bugs with a regression test already are skipped over."""
    return os.environ.get("WSFS_FUZZ_KNOWN", "") == "allow"


def run(test_one_input: Callable[[bytes], None], modules: tuple[str, ...]) -> None:
    """Instrument ``modules`` (imported under instrumentation) and fuzz."""
    with atheris.instrument_imports(include=["wsfront", "wsstorage"]):
        for name in modules:
            __import__(name)
    atheris.Setup(sys.argv, test_one_input)
    atheris.Fuzz()
