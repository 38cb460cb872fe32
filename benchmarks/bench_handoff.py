"""The loader's hand-off, warm: ``fs.batches`` against the bare ``fs.gather`` it is built on.

    .venv/bin/python benchmarks/bench_handoff.py [--quick] [--repeats 7] [--workdir DIR]

One set of 262,144 x 768 float16 rows (384 MiB), in the page cache and mapped before timing. Each
repetition draws a fresh permutation and runs every variant over a whole epoch, in an order rotated
per repetition, so machine noise hits them alike; the table gives medians and each variant's ratio
to the bare gathers of the same repetitions. Variants:

  fs.gather           x = fs.gather(idx) per batch: the bare loop the issue measured (a fresh tensor each
                      batch), over a permutation drawn beforehand
  gather into 1 buffer  fs.gather_into(idx, out) into one preallocated tensor (no loader can do this: the
                      caller holds batch b while b+1 is gathered)
  gather + permutation  the same, with the epoch's permutation (rng.permutation(n)) timed too
  batches             an epoch of a loader fs.batches(bs, labels=False) made once per batch size (as a
                      training run makes it), in steady state: the epoch's order was drawn ahead during
                      the previous epoch (featstore.batches.orders.OrderAhead); prefetch=2, recycled buffers
  batches, first epoch  a fresh loader's first epoch, its permutation drawn inside the timing
  batches + labels    steady state, the stored labels gathered too
  batches prefetch=0  steady state, no thread: the batches are assembled on the calling thread
  batches prefetch=1  steady state, one batch ahead

Results: benchmarks/results/handoff.{json,md} (``--quick``: handoff-quick.*, 32,768 rows, 2 repeats).
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import shlex
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from _machine import cpu_busy_share, load_note

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))
RESULTS = REPO / "benchmarks" / "results"
PEERS = ("fs.gather", "gather into 1 buffer", "gather + permutation")  # every variant's ratio is given to these


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--workdir", type=Path, default=None)
    ap.add_argument(
        "--row-values",
        type=int,
        default=768,
        help="float16 values a row (2: the gather costs ~nothing, what is left is the loader)",
    )
    args = ap.parse_args()
    import featstore

    torch.set_num_threads(1)
    n = 32_768 if args.quick else 262_144
    width = args.row_values
    repeats = 2 if args.quick else args.repeats
    work = Path(args.workdir or tempfile.mkdtemp(prefix="featstore-handoff-", dir="/var/tmp"))
    store = featstore.FeatureStore.create(work / "store")
    rng = np.random.default_rng(0)
    with store.create_feature_set("vec", n, (width,), "float16", labels=np.arange(n) % 10) as w:
        for a in range(0, n, 32_768):
            w.write(a, rng.standard_normal((min(n, a + 32_768) - a, width), dtype=np.float32).astype(np.float16))
    fs = featstore.FeatureStore.open(work / "store")["vec"]
    fs.advise("willneed")
    float(fs.to_torch().float().sum())  # in the page cache and mapped

    def gather(bs: int, rep: int, shuffle_timed: bool = False, fresh: bool = False) -> float:
        out = torch.empty(bs, width, dtype=torch.float16)
        t = time.perf_counter()
        perm = np.random.default_rng(rep).permutation(n)
        if not shuffle_timed:
            t = time.perf_counter()
        for i in range(0, n - bs + 1, bs):
            if fresh:
                out = fs.gather(perm[i : i + bs])
            else:
                fs.gather_into(perm[i : i + bs], out)
        return (n // bs * bs) / (time.perf_counter() - t)

    loaders: dict[tuple, object] = {}

    def batches(bs: int, rep: int, first_epoch: bool = False, **options) -> float:
        options.setdefault("labels", False)
        key = (bs, *sorted(options.items()))
        if first_epoch or key not in loaders:
            loaders[key] = fs.batches(bs, seed=rep, drop_last=True, read="mmap", **options)
        loader = loaders[key]
        rows = 0
        t = time.perf_counter()
        for b in loader:  # an epoch: the gathers, the hand-off (and, for a first epoch, its permutation)
            rows += b.features.shape[0]
        return rows / (time.perf_counter() - t)

    variants = {
        "fs.gather": lambda bs, r: gather(bs, r, fresh=True),
        "gather into 1 buffer": gather,
        "gather + permutation": lambda bs, r: gather(bs, r, True),
        "batches": batches,
        "batches, first epoch": lambda bs, r: batches(bs, r, first_epoch=True),
        "batches + labels": lambda bs, r: batches(bs, r, labels=True),
        "batches prefetch=0": lambda bs, r: batches(bs, r, prefetch=0),
        "batches prefetch=1": lambda bs, r: batches(bs, r, prefetch=1),
    }
    busy_before = cpu_busy_share()
    table: dict = {}
    for bs in (1024, 8192):
        runs: dict[str, list[float]] = {k: [] for k in variants}
        for f in variants.values():
            f(bs, 99)  # untimed: buffers and pool warm
        for rep in range(repeats):
            names = list(variants)
            names = names[rep % len(names) :] + names[: rep % len(names)]
            for name in names:
                runs[name].append(variants[name](bs, rep))
        table[str(bs)] = runs
    busy_after = cpu_busy_share()
    row_bytes = fs.row_bytes
    del fs
    shutil.rmtree(work, ignore_errors=True)
    results = {
        "command": " ".join(shlex.quote(a) for a in [sys.executable, *sys.argv]),
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "rows": n,
        "row_bytes": row_bytes,
        "repeats": repeats,
        "backend": featstore.backend(),
        "threads": featstore.get_num_threads(),
        "cpus": os.cpu_count(),
        "busy_before": busy_before,
        "busy_after": busy_after,
        "peers": list(PEERS),
        "rows_per_s": table,
    }
    stem = ("handoff-quick" if args.quick else "handoff") + ("" if width == 768 else f"-{width}")
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / f"{stem}.json").write_text(json.dumps(results, indent=1) + "\n")
    (RESULTS / f"{stem}.md").write_text(report(results))
    print(report(results))
    return 0


def report(results: dict) -> str:
    peers = results["peers"]
    lines = [
        "# The loader's hand-off (warm)",
        "",
        f"Command: `{results['command']}`  ",
        f"Date: {results['date']}; {results['rows']:,} rows of {results['row_bytes']} bytes; backend "
        f"{results['backend']}, {results['threads']} gather threads, {results['cpus']} CPUs; {results['repeats']} "
        f"repetitions. CPUs busy {results['busy_before']:.0%} before and {results['busy_after']:.0%} after "
        f"({load_note(results['busy_before'], results['busy_after'])}; the ratios compare variants of the "
        "same repetitions).",
        "",
        "Ratios are medians of per-repetition ratios to the bare gathers of the same repetitions: "
        "`fs.gather` (a fresh tensor a batch, as the issue measured it), `gather into 1 buffer` (the",
        "strictest: one buffer the caller never holds) and `gather + permutation` (that, with the epoch's",
        "permutation drawn inside the timing, as a loader's first epoch must).",
        "",
        "| variant | B=1024 GB/s | us/batch | "
        + " | ".join(f"x {p}" for p in peers)
        + " | B=8192 GB/s | us/batch | "
        + " | ".join(f"x {p}" for p in peers)
        + " |",
        "|---|" + "---|" * (2 * (2 + len(peers))),
    ]
    t = results["rows_per_s"]
    for name in t["1024"]:
        cells = []
        for bs in ("1024", "8192"):
            med = statistics.median(t[bs][name])
            ratios = [statistics.median(a / b for a, b in zip(t[bs][name], t[bs][peer], strict=True)) for peer in peers]
            cells += [f"{med * results['row_bytes'] / 1e9:.2f}", f"{1e6 * int(bs) / med:.0f}"]
            cells += [f"{r:.2f}" for r in ratios]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())
