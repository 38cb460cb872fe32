"""The dequantising gather of the compiled core against the plain float16 gather, in memory (warm):
8192 random picks from 20000 rows of 768 values, single-threaded and with the gather pool.

    python benchmarks/micro_dequant.py
"""

from __future__ import annotations

import time

import numpy as np

from featstore import _backend


def rate(fn, picks: int, repeats: int = 10) -> float:
    fn()
    t = time.perf_counter()
    for _ in range(repeats):
        fn()
    return picks * repeats / (time.perf_counter() - t)


def main() -> None:
    n, d, picks = 20000, 768, 8192
    rng = np.random.default_rng(0)
    codes = rng.integers(-127, 128, (n, d)).astype(np.int8).view(np.uint8)
    scales = rng.random(n).astype(np.float32)
    f16 = rng.random((n, d)).astype(np.float16).view(np.uint8)
    idx = rng.integers(0, n, picks).astype(np.int64)
    out = np.empty(picks * d * 4, np.uint8)
    print(f"backend {_backend.name()}, pool {_backend.get_num_threads()} threads; rows of {d} values, {picks} picks")
    for threads in (1, 0):
        cells = {
            "float16 gather": lambda: _backend.gather(f16, d * 2, idx, out, threads),
            "int8 -> float16": lambda: _backend.dequant_gather(
                codes, scales, d, d, idx, out, "int8", "float16", threads
            ),
            "int8 -> float32": lambda: _backend.dequant_gather(
                codes, scales, d, d, idx, out, "int8", "float32", threads
            ),
            "int8 -> bfloat16": lambda: _backend.dequant_gather(
                codes, scales, d, d, idx, out, "int8", "bfloat16", threads
            ),
            "float8_e4m3 -> float16": lambda: _backend.dequant_gather(
                codes, scales, d, d, idx, out, "float8_e4m3", "float16", threads
            ),
        }
        for name, fn in cells.items():
            print(f"threads={threads or 'pool'}  {name:24} {rate(fn, picks) / 1e6:6.2f} M rows/s")


if __name__ == "__main__":
    main()
