"""What the machine is doing while a benchmark runs: the share of CPU time other work keeps busy."""

from __future__ import annotations

import os
import time


def cpu_counters() -> tuple[float, float, float]:
    """(wall, CPU-seconds busy on the whole machine, CPU-seconds used by this process and its children)."""
    with open("/proc/stat") as f:
        ticks = [int(x) for x in f.readline().split()[1:]]
    busy = (sum(ticks[:8]) - ticks[3] - ticks[4]) / os.sysconf("SC_CLK_TCK")  # all but idle and iowait
    t = os.times()
    return time.perf_counter(), busy, t.user + t.system + t.children_user + t.children_system


def others_busy(since: tuple[float, float, float]) -> float:
    """Fraction of the machine's CPUs that other processes kept busy since ``since`` (they skew timings)."""
    wall0, busy0, own0 = since
    wall1, busy1, own1 = cpu_counters()
    return max(0.0, (busy1 - busy0) - (own1 - own0)) / max(1e-9, (wall1 - wall0) * (os.cpu_count() or 1))


def cpu_busy_share(seconds: float = 1.0) -> float:
    """Fraction of all CPUs' time that other work kept busy over the next ``seconds`` (this process idles)."""
    start = cpu_counters()
    time.sleep(seconds)
    return others_busy(start)


def load_note(busy_before: float, busy_after: float) -> str:
    """What the CPU-busy probes before and after a run say of the figures, for its report."""
    if max(busy_before, busy_after) <= 0.1:
        return "other processes included: the machine was otherwise idle"
    return "other processes included: the machine was shared, so the figures are noisy"
