"""How much of the disk one direct read call gets, by the rows it asks for at once, beside fio.

    .venv/bin/python benchmarks/micro_direct_batch.py [--workdir DIR] [--repeats 3]

One set of 98,688-byte rows (the size of a 257 x 384 int8 patch grid), 0.5 GB, read with O_DIRECT
(no page cache, so no cgroup is needed). Each repetition runs, back to back: fio random 100 KiB reads
at queue depth 32 (io_uring, 4 KiB-aligned offsets), then ``fs.direct.read`` of random rows at the
same queue depth from one thread, asking for 64, 256 or 1024 rows a call. A call's last requests
finish with fewer and fewer in flight, so small calls leave the disk idle part of the time: the
figure the issue's patch-grid int8 cells (batches of 64 rows) pay. Medians of the repetitions.

Results: benchmarks/results/micro_direct_batch.txt.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
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


def fio_gbps(path: Path, seconds: int = 3) -> float:
    cmd = [
        "fio", "--name=c", f"--filename={path}", "--rw=randread", "--bs=100k", "--blockalign=4k",
        "--iodepth=32", "--ioengine=io_uring", "--direct=1", f"--runtime={seconds}", "--time_based",
        "--readonly", "--output-format=json",
    ]  # fmt: skip
    out = subprocess.run(cmd, capture_output=True, text=True, check=True)
    return json.loads(out.stdout)["jobs"][0]["read"]["bw_bytes"] / 1e9


def direct_gbps(fs, call_rows: int, seconds: float = 3.0) -> float:
    out = np.empty(call_rows * fs.row_bytes, np.uint8)
    rng, rows_read = np.random.default_rng(call_rows), 0
    t0 = time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        rows = np.sort(rng.choice(len(fs), call_rows, replace=False)).astype(np.int64)
        fs.direct.read(rows, out)
        rows_read += call_rows
    return rows_read * fs.row_bytes / (time.perf_counter() - t0) / 1e9


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--workdir", type=Path, default=None)
    ap.add_argument("--repeats", type=int, default=3)
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
        runs: dict[str, list[float]] = {"fio": [], **{f"featstore {c} rows a call": [] for c in CALL_ROWS}}
        for _ in range(args.repeats):
            runs["fio"].append(fio_gbps(fs.path))
            for c in CALL_ROWS:
                runs[f"featstore {c} rows a call"].append(direct_gbps(fs, c))
    finally:
        shutil.rmtree(work, ignore_errors=True)
    fio_median = statistics.median(runs["fio"])
    lines = [
        f"{fs.row_bytes:,}-byte rows, O_DIRECT, queue depth 32, one thread; medians of {args.repeats} "
        f"({time.strftime('%Y-%m-%d %H:%M', time.gmtime())} UTC)"
    ]
    for name, values in runs.items():
        m = statistics.median(values)
        spread = f"{min(values):.2f}-{max(values):.2f}"
        lines.append(f"{name:28} {m:.2f} GB/s (range {spread})  {m / fio_median:.2f}x fio")
    text = "\n".join(lines) + "\n"
    (REPO / "benchmarks" / "results" / "micro_direct_batch.txt").write_text(text)
    print(text, end="")
    return 0


if __name__ == "__main__":
    sys.exit(main())
