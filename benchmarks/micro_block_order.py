"""The block order's per-epoch draw: ``block_order`` (one small sort a window) against the two-key
``np.lexsort`` of every row that the first version ran (its dominant step, timed alone), for 1.1M rows in
4 MiB blocks of 768-byte rows, 4 blocks a window. Wall time (median of 7) and peak traced memory.

    python benchmarks/micro_block_order.py
"""

from __future__ import annotations

import statistics
import time
import tracemalloc

import numpy as np

from featstore.batches.orders import block_order


def timed(fn, repeats: int = 7) -> float:
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def peak_mb(fn) -> float:
    tracemalloc.start()
    fn()
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    return peak / 1e6


def main() -> None:
    n, block_rows, window_blocks = 1_120_000, 5461, 4
    rows = np.arange(n, dtype=np.int64)
    key = np.random.default_rng(0).random(n)
    window = np.minimum(np.arange(n) // (block_rows * window_blocks), n)

    def new() -> None:
        block_order(rows, 0, 1, block_rows, window_blocks)

    def old_lexsort() -> None:
        np.lexsort((key, window))

    print(f"{n:,} rows, blocks of {block_rows} rows, {window_blocks} blocks a window")
    for name, fn in (("block_order (a sort a window)", new), ("np.lexsort of every row (old)", old_lexsort)):
        print(f"{name:32s} {timed(fn) * 1e3:7.1f} ms   peak {peak_mb(fn):5.1f} MB")


if __name__ == "__main__":
    main()
