"""The free space a storage server keeps back from new blobs.

A disk filled to the last block fails every write at once: the write
stream that filled it, the checksum file, the blob records and the put
journal's checkpoint of puts already acknowledged.  So a server stops
taking *new* blobs while its free space is below the reserve: its health
answer names the problem (front ends place no new blob there; ``wsfs
status`` shows it "unwritable") and the store itself refuses to create one
(DiskFull), in case a front end's view is a probe old.  Streams already
open go on into the reserve, reads and deletes are unaffected, and a fence
may still create its empty blob.  The idea of Swift's object server
``fallocate_reserve`` (refuse new objects, 507, below a free-space
floor); the default is 1 % of the file system.
"""

from __future__ import annotations

import re

import attrs

_UNITS = {
    "": 1,
    "b": 1,
    "k": 1 << 10,
    "kb": 1 << 10,
    "kib": 1 << 10,
    "m": 1 << 20,
    "mb": 1 << 20,
    "mib": 1 << 20,
    "g": 1 << 30,
    "gb": 1 << 30,
    "gib": 1 << 30,
    "t": 1 << 40,
    "tb": 1 << 40,
    "tib": 1 << 40,
}
_SPEC = re.compile(r"\s*(\d+(?:\.\d+)?)\s*(%|[a-zA-Z]*)\s*")

#: What ``--reserve`` is when not given.
DEFAULT_RESERVE = "1%"


@attrs.frozen
class Reserve:
    """A fixed number of bytes, or a fraction of the file system's size."""

    fixed: int = 0
    fraction: float = 0.0

    @classmethod
    def parse(cls, text: str) -> Reserve:
        """``"1%"``, ``"512MiB"``, ``"2G"``, ``"0"`` (binary units; a bare
        number is bytes).  ValueError, naming the text, for anything else
        or a percentage of 50 or more (a server that takes nothing new
        once half full is a typo, not a policy)."""
        m = _SPEC.fullmatch(text)
        unit = m.group(2).lower() if m else None
        if m is None or (unit != "%" and unit not in _UNITS):
            raise ValueError(
                f"{text!r} is not a reserve: give bytes (with an optional unit, "
                "as 512MiB or 2G) or a percentage of the disk (1%)"
            )
        number = float(m.group(1))
        if unit == "%":
            if number >= 50:
                raise ValueError(f"a reserve of {text!r} is half the disk or more")
            return cls(fraction=number / 100)
        return cls(fixed=int(number * _UNITS[unit]))

    def bytes_of(self, total: int) -> int:
        """The reserve on a file system of ``total`` bytes."""
        return self.fixed + int(total * self.fraction)

    def too_large_for(self, total: int) -> str | None:
        """Why this reserve cannot be kept on a file system of ``total``
        bytes, or None: a size the whole disk cannot leave free (a
        percentage is below half, so never), with which the store would
        take no new blob, ever, whatever is deleted."""
        if not total or self.bytes_of(total) < total:
            return None
        return (
            f"--reserve {human_bytes(self.bytes_of(total))} is the whole disk or more "
            f"(its file system holds {human_bytes(total)}): no new blob could ever be "
            "stored; give a smaller size, or a percentage (1%)"
        )

    def __str__(self) -> str:
        return f"{self.fraction * 100:g}%" if self.fraction else f"{self.fixed} bytes"


class ReserveTooLarge(ValueError):
    """A ``--reserve`` the store's disk cannot leave free (``Reserve.too_large_for``)."""


#: No reserve at all: a store opened on its own (tests, tools) keeps none
#: unless told; the storage server sets ``DEFAULT_RESERVE``.
NO_RESERVE = Reserve()


def below_reserve_problem(free: int, reserve: int) -> str | None:
    """The health answer's ``problem`` for ``free`` bytes free against a
    reserve of ``reserve`` bytes, or None if it is not below it."""
    if free >= reserve:
        return None
    return f"free space ({human_bytes(free)}) is below the reserve ({human_bytes(reserve)})"


def human_bytes(n: float) -> str:
    """``512 B``, ``1.5 MiB``, ``2.0 TiB``: a size as operators read it (the
    reserve's problem text, ``wsfs status``)."""
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if n < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TiB"  # pragma: no cover
