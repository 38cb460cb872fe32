"""The random order's per-epoch draw: featstore's ``uniform_permutation`` (the compiled core's
``permute_pcg64``) against numpy's ``default_rng([seed, epoch]).permutation(n)``, which it equals bit for
bit (checked here too). Wall time, median of 15 draws, one thread.

    python benchmarks/micro_permutation.py
"""

from __future__ import annotations

import statistics
import time

import numpy as np

from featstore import backend
from featstore.batches.orders import uniform_permutation


def timed(fn, repeats: int = 15) -> float:
    times = []
    for epoch in range(repeats):
        t = time.perf_counter()
        fn(epoch)
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def main() -> None:
    print(f"backend {backend()}")
    for n in (262_144, 1_120_000, 8_388_608):
        assert np.array_equal(uniform_permutation(n, 0, 1), np.random.default_rng([0, 1]).permutation(n))
        ours = timed(lambda e: uniform_permutation(n, 0, e))
        theirs = timed(lambda e: np.random.default_rng([0, e]).permutation(n))
        print(f"{n:>10,} rows  featstore {ours * 1e3:7.2f} ms   numpy {theirs * 1e3:7.2f} ms   {theirs / ours:4.2f}x")


if __name__ == "__main__":
    main()
