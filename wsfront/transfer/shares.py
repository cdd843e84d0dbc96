"""Equal shares of a process-wide byte budget among the streams running.

Every buffer a download or upload holds per reactor turn (socket read
sizes, send buffers, a storage server's read-ahead in ``wslocal``) is worth
having large when one stream runs (fewer reads, sends and Python calls per
MiB) and costly when hundreds do (each holds its own).  So each is sized as
one stream's part of a budget for the whole process: a lone stream gets
``ceiling``, many get ``budget / active`` and never less than ``floor``,
and a stream that takes its share again later grows back as others end.
"""

from __future__ import annotations


def fair_share(budget: int, active: int, floor: int, ceiling: int, step: int = 1) -> int:
    """One of ``active`` streams' equal part of ``budget`` bytes, within
    ``floor`` and ``ceiling``, rounded down to a multiple of ``step``
    (never below ``floor``).  ``floor`` and ``ceiling`` should be
    multiples of ``step``: a ceiling that is not is never reached."""
    share = max(floor, min(ceiling, budget // max(1, active)))
    return max(floor, share - share % step)
