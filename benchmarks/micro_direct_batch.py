"""How much of the disk one direct read call gets, by the rows it asks for at once, beside fio.

    .venv/bin/python benchmarks/micro_direct_batch.py [--workdir DIR] [--repeats 3]

One set of 98,688-byte rows (the size of a 257 x 384 int8 patch grid), 0.5 GB, read with O_DIRECT
(no page cache, so no cgroup is needed). Each repetition runs, back to back and in turn reversed:
fio random 100 KiB reads at queue depth 32 (io_uring, 4 KiB-aligned offsets); ``fs.direct.read`` of
random rows at the same queue depth from one thread, asking for 64, 256 or 1024 rows a call; and the
same 1024-row calls' pages read by the core into distinct places, with no bounce slot and no copy
out ("pages only"): the ceiling of featstore's own work; and two threads at once reading 64 or 256
rows a call, as the loader's two prefetch threads do. A call's last requests finish with fewer
and fewer in flight, so small calls leave the disk idle part of the time: the figure the issue's
patch-grid int8 cells (batches of 64 rows) pay. The disk drifts by 2x within minutes here, so the
cells are short and each ratio is the median of the per-repetition ratios.

Results: benchmarks/results/micro_direct_batch.txt.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))
import featstore  # noqa: E402

ROW_SHAPE = (257, 192)  # float16: 98,688 bytes a row
CALL_ROWS = (64, 256, 1024)
TWO_READER_ROWS = (64, 256)  # does a bigger call help once two threads read at once?


def fio_gbps(path: Path, seconds: int = 3) -> float:
    cmd = [
        "fio", "--name=c", f"--filename={path}", "--rw=randread", "--bs=100k", "--blockalign=4k",
        "--iodepth=32", "--ioengine=io_uring", "--direct=1", f"--runtime={seconds}", "--time_based",
        "--readonly", "--output-format=json",
    ]  # fmt: skip
    out = subprocess.run(cmd, capture_output=True, text=True, check=True)
    return json.loads(out.stdout)["jobs"][0]["read"]["bw_bytes"] / 1e9


def direct_gbps(fs, call_rows: int, seconds: float, read=None) -> float:
    out = np.zeros(call_rows * fs.row_bytes, np.uint8)
    read = read or (lambda rows: fs.direct.read(rows, out))
    rng, rows_read = np.random.default_rng(), 0
    t0 = time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        read(np.sort(rng.choice(len(fs), call_rows, replace=False)).astype(np.int64))
        rows_read += call_rows
    return rows_read * fs.row_bytes / (time.perf_counter() - t0) / 1e9


def two_readers_gbps(fs, call_rows: int, seconds: float) -> float:
    """Two threads at once, each with its own calls of ``call_rows`` rows, as the loader's two prefetch
    threads read random patch-grid batches."""
    rates = [0.0, 0.0]

    def one(i: int) -> None:
        rates[i] = direct_gbps(fs, call_rows, seconds)

    threads = [threading.Thread(target=one, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return sum(rates)


def pages_only(fs, call_rows: int):
    """A read of ``rows``' whole pages, each row's to its own place in one aligned buffer: the core's
    requests with nothing after them (no bounce slot, no copy out), for the same rows as a direct read."""
    from featstore import _backend
    from featstore.store.direct import PAGE, aligned_buffer

    d, slot = fs.direct, -(-fs.row_bytes // PAGE) + 1  # pages around any row
    buf, whole = aligned_buffer(call_rows * slot * PAGE), os.fstat(d.direct_fd()).st_size // PAGE

    def read(rows: np.ndarray) -> None:
        begin = d.data_start + rows * fs.row_bytes
        first, last = begin // PAGE, np.minimum(-(-(begin + fs.row_bytes) // PAGE), whole)
        pages = np.concatenate([np.arange(f, e) for f, e in zip(first.tolist(), last.tolist())])
        pos = np.concatenate([np.arange(e - f) + i * slot for i, (f, e) in enumerate(zip(first, last))])
        _backend.read_rows(d.direct_fd(), 0, PAGE, whole, pages, buf, 32, 1 << 20, str(fs.path), pos)

    return read


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--workdir", type=Path, default=None)
    ap.add_argument("--repeats", type=int, default=8)
    ap.add_argument("--seconds", type=float, default=1.5, help="seconds a featstore cell (fio: 2 s, its minimum)")
    args = ap.parse_args()
    torch.set_num_threads(1)
    if shutil.which("fio") is None:
        print("micro_direct_batch: skipped: fio is not installed (apt-get install fio)")
        return 0
    work = Path(args.workdir or tempfile.mkdtemp(prefix="featstore-direct-", dir="/var/tmp"))
    try:
        store = featstore.FeatureStore.create(work / "store")
        n, per = 5120, 256
        rng = np.random.default_rng(0)
        with store.create_feature_set("patch", n, ROW_SHAPE, "float16") as w:
            for a in range(0, n, per):
                w.write(a, rng.standard_normal((per, *ROW_SHAPE), dtype=np.float32).astype(np.float16))
        fs = featstore.FeatureStore.open(work / "store")["patch"]
        cells = {"fio": lambda: fio_gbps(fs.path, 2)}
        for c in CALL_ROWS:
            cells[f"featstore {c} rows a call"] = functools.partial(direct_gbps, fs, c, args.seconds)
        pages = pages_only(fs, CALL_ROWS[-1])
        cells[f"pages only, {CALL_ROWS[-1]} rows"] = lambda: direct_gbps(fs, CALL_ROWS[-1], args.seconds, pages)
        for c in TWO_READER_ROWS:
            cells[f"2 threads, {c} rows a call"] = functools.partial(two_readers_gbps, fs, c, args.seconds)
        runs: dict[str, list[float]] = {name: [] for name in cells}
        for rep in range(args.repeats):
            for name in list(cells)[:: 1 if rep % 2 == 0 else -1]:
                runs[name].append(cells[name]())
    finally:
        shutil.rmtree(work, ignore_errors=True)
    lines = [
        f"{fs.row_bytes:,}-byte rows, O_DIRECT, queue depth 32, one thread; medians of {args.repeats} "
        f"({time.strftime('%Y-%m-%d %H:%M', time.gmtime())} UTC; command: {' '.join(sys.argv)})",
        "ratios: medians of the per-repetition ratios",
    ]
    pages_name = f"pages only, {CALL_ROWS[-1]} rows"
    for name, values in runs.items():
        m = statistics.median(values)
        to_fio = statistics.median(v / f for v, f in zip(values, runs["fio"]))
        to_pages = statistics.median(v / p for v, p in zip(values, runs[pages_name]))
        spread = f"{min(values):.2f}-{max(values):.2f}"
        lines.append(f"{name:28} {m:.2f} GB/s (range {spread})  {to_fio:.2f}x fio  {to_pages:.2f}x pages only")
    text = "\n".join(lines) + "\n"
    (REPO / "benchmarks" / "results" / "micro_direct_batch.txt").write_text(text)
    print(text, end="")
    return 0


if __name__ == "__main__":
    sys.exit(main())
