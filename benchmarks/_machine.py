"""What the machine is doing while a benchmark runs: the share of CPU time other work keeps busy."""

from __future__ import annotations

import time
from pathlib import Path


def cpu_busy_share(seconds: float = 1.0) -> float:
    """Fraction of all CPUs' time that was not idle (idle + iowait) over the next ``seconds``."""

    def snap():
        f = [int(x) for x in Path("/proc/stat").read_text().split("\n")[0].split()[1:]]
        return sum(f), f[3] + f[4]

    t0, i0 = snap()
    time.sleep(seconds)
    t1, i1 = snap()
    return 1 - (i1 - i0) / max(1, t1 - t0)
