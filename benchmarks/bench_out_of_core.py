"""Out-of-core benchmark: feature sets 3x larger than a memory cgroup, read cold, by featstore and its peers.

    sudo .venv/bin/python benchmarks/bench_out_of_core.py [--quick] [--limit-mib 512] [--repeats 3]
        [--seconds 6] [--workdir DIR] [--keep] [--readers SUBSTRING] [--out STEM]
        [--dtypes float16,int8] [--warm] [--throttle-mb-s 400]

What it does:

* makes a memory cgroup (v1 ``memory.limit_in_bytes``, else v2 ``memory.max``) of ``--limit-mib``
  inside its own, and removes it at the end (needs root: without it, or without a memory
  controller, it says so and exits 0 without results);
* writes two feature sets, each at least ``--ratio`` (3) times the limit: 768-d float16 rows (read
  in batches of 1024) and 257 x 384 float16 patch grids (batches of 64), plus a ``.pt`` export of
  each for ``torch.load(mmap=True)``; with ``--dtypes float16,int8`` (the default; float8_e4m3 too
  if named) the same sets again as compact int8 / float8 copies (docs/compact-storage.md), read by
  the featstore readers (the peers read float16 only);
* for every cell (set x reader x repetition) drops the set's files from the page cache
  (``posix_fadvise(DONTNEED)``), then runs the reader in a fresh process that joins the cgroup once
  torch is imported (cgroup v1 leaves what it held before charged where it was, so the limit binds
  what the reading takes: page cache, batch buffers, private memory) and reads random batches for
  ``--seconds`` (at least one batch); a compact set's repetition runs right beside its float16
  twin's (in turn first), so their paired ratio is free of the disk's drift between minutes;
* readers: featstore ``fs.batches`` with ``read`` auto / direct / mmap in random and block order;
  numpy memmap fancy indexing; safetensors ``safe_open(...).get_tensor`` + ``index_select``;
  ``torch.load(mmap=True)`` + ``index_select``; a Python ``os.preadv`` loop, one row at a time;
* ceilings: fio (installed with apt-get when missing) on the same file, with O_DIRECT and libaio:
  random reads of the row's size rounded up to 4 KiB at the direct path's queue depth (32), and
  sequential 1 MiB reads at queue depth 16;
* with ``--throttle-mb-s N``, the readers and fio also join a cgroup that caps their reads from the
  disk at N MB/s (v1 ``blkio.throttle.read_bps_device``, else v2 ``io.max``; removed at the end). A
  disk behind a host cache, like this VM's, serves 0.8-1.6 GB/s from one minute to the next; under a
  cap below its slowest minute every bandwidth-bound cell is bound by the same steady rate, so a
  compact set's gain over float16 is what featstore makes of the smaller rows, not the disk's drift;
* with ``--warm``, each featstore cell once more with the set's files read into the page cache first
  (not dropped): the memory-bound case;
* reports rows/s, GB/s (10^9 bytes of rows delivered per second), the CPU it kept busy (``cpu_s``
  in the JSON: user + system seconds of every thread), the reader's peak private memory
  (RssAnon) and whether the kernel OOM-killed it, medians over ``--repeats``, with the ratios the
  issue sets as targets.

Results: benchmarks/results/out_of_core.{json,md} (``--quick``: out_of_core-quick.*, smaller sets).
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import shlex
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from _cgroups import Group, memory_group, read_throttle, remove
from _machine import cpu_busy_share as cpu_busy
from _machine import load_note

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))
RESULTS = REPO / "benchmarks" / "results"
MIB = 1 << 20
QUEUE_DEPTH = 32

FEATSTORE = [f"featstore {read} {order}" for order in ("random", "block") for read in ("auto", "direct", "mmap")]
PEERS = [
    "numpy memmap",
    "safetensors mmap + index_select",
    "torch.load(mmap=True) + index_select",
    "python preadv loop",
]


# ---- the worker: one cell, in the cgroup ---------------------------------------------------------


def _rss_anon() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("RssAnon:"):
            return int(line.split()[1]) * 1024
    return 0


def worker(spec: dict) -> dict:
    import torch

    import featstore

    torch.set_num_threads(1)
    for procs in spec["cgroup_procs"]:  # the memory cgroup, and the read throttle's where there is one
        Path(procs).write_text(str(os.getpid()))
    base_anon = _rss_anon()
    fs = featstore.FeatureStore.open(spec["root"])[spec["key"]]
    n, bs, reader = len(fs), spec["batch"], spec["reader"]
    perm = np.random.default_rng(spec["rep"]).permutation(n).astype(np.int64)
    batches = (perm[i : i + bs] for i in range(0, n - bs + 1, bs))
    info: dict = {}
    if reader.startswith("featstore"):
        _, read, order = reader.split()
        loader = fs.batches(bs, seed=spec["rep"], read=read, order=order, labels=False, drop_last=True)
        info = {k: loader.info[k] for k in ("read", "read_why")}
        source = (b.features for b in loader)
    elif reader == "numpy memmap":
        m = np.memmap(fs.path, dtype=np.float16, mode="r", offset=fs.header.data_start, shape=(n, *fs.row_shape))
        source = (m[idx] for idx in batches)
    elif reader.startswith("safetensors"):
        from safetensors import safe_open

        t = safe_open(str(fs.path), framework="pt").get_tensor("features")
        source = (torch.index_select(t, 0, torch.from_numpy(idx)) for idx in batches)
    elif reader.startswith("torch.load"):
        t = torch.load(spec["pt"], mmap=True, weights_only=True)["features"]
        source = (torch.index_select(t, 0, torch.from_numpy(idx)) for idx in batches)
    else:  # one os.preadv per row
        fd = os.open(fs.path, os.O_RDONLY)
        out = np.empty((bs, fs.row_bytes), np.uint8)
        start, rb = fs.header.data_start, fs.row_bytes

        def pread_loop(idx):
            for i, r in enumerate(idx.tolist()):
                os.preadv(fd, [out[i]], start + r * rb)
            return out

        source = (pread_loop(idx) for idx in batches)
    rows, peak = 0, 0
    cpu0 = os.times()
    t0 = time.perf_counter()
    for x in source:
        rows += x.shape[0]
        peak = max(peak, _rss_anon())
        if time.perf_counter() - t0 >= spec["seconds"]:
            break
    seconds = time.perf_counter() - t0
    cpu1 = os.times()
    cpu = cpu1.user + cpu1.system - cpu0.user - cpu0.system  # every thread of the reader
    return {"rows": rows, "seconds": seconds, "cpu_s": cpu, "private_bytes": peak - base_anon, **info}


# ---- the driver ----------------------------------------------------------------------------------


def drop_cache(paths: list[Path]) -> None:
    for p in paths:
        fd = os.open(p, os.O_RDONLY)
        try:
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)


def write_set(store, key: str, n: int, row_shape: tuple[int, ...]) -> None:
    rng = np.random.default_rng(0)
    per = max(1, (64 * MIB) // (int(np.prod(row_shape)) * 2))
    with store.create_feature_set(key, n, row_shape, "float16") as w:
        for a in range(0, n, per):
            b = min(n, a + per)
            w.write(a, rng.standard_normal((b - a, *row_shape), dtype=np.float32).astype(np.float16))


def fio(path: Path, rw: str, bs: int, depth: int, seconds: int, throttle=None) -> dict:
    if shutil.which("fio") is None:
        subprocess.run(["apt-get", "install", "-y", "fio"], check=False, capture_output=True)
    if shutil.which("fio") is None:
        return {"error": "fio is not installed and apt-get install fio failed"}
    cmd = [
        "fio", "--name=ceiling", f"--filename={path}", f"--rw={rw}", f"--bs={bs}", f"--iodepth={depth}",
        "--ioengine=libaio", "--direct=1", f"--runtime={seconds}", "--time_based", "--readonly",
        "--output-format=json",
    ]  # fmt: skip
    join = (lambda: throttle.join()) if throttle is not None else None  # fio under the readers' cap too
    out = subprocess.run(cmd, capture_output=True, text=True, preexec_fn=join)
    if out.returncode != 0:
        return {"error": out.stderr.strip()[-300:]}
    job = json.loads(out.stdout)["jobs"][0]["read"]
    return {"iops": job["iops"], "bytes_per_s": job["bw_bytes"], "bs": bs, "depth": depth, "rw": rw}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    ap.add_argument("--quick", action="store_true", help="small sets and limit, 1 repetition, 2 s cells")
    ap.add_argument("--limit-mib", type=int, default=512)
    ap.add_argument("--ratio", type=float, default=3.2, help="set size / cgroup limit")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--seconds", type=float, default=6.0, help="seconds of reading per cell")
    ap.add_argument("--workdir", type=Path, default=None)
    ap.add_argument("--keep", action="store_true")
    ap.add_argument("--readers", default="", help="only the readers whose name contains this (e.g. 'block')")
    ap.add_argument("--out", default="", help="results file stem (default out_of_core, or out_of_core-quick)")
    ap.add_argument("--dtypes", default="float16,int8", help="stored dtypes: float16, int8, float8_e4m3")
    ap.add_argument("--warm", action="store_true", help="also featstore cells with the page cache warm")
    ap.add_argument(
        "--throttle-mb-s",
        type=float,
        default=0,
        help="cap the readers' and fio's disk reads at this many MB/s (a blkio / io cgroup): every cell "
        "is then bound by one steady rate, below the disk's slowest minute",
    )
    args = ap.parse_args()
    if args.worker:
        print(json.dumps(worker(json.loads(args.worker))))
        return 0
    if args.quick:
        args.limit_mib, args.repeats, args.seconds = 128, 1, 2.0
    limit = args.limit_mib * MIB
    group = memory_group(limit)
    if isinstance(group, str):
        print(f"bench_out_of_core: skipped: {group}")
        return 0
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # the cgroup and the sets are removed on SIGTERM too
    import featstore

    work = Path(args.workdir or tempfile.mkdtemp(prefix="featstore-ooc-", dir="/var/tmp"))
    throttle: Group | str | None = None
    try:  # from here on, whatever happens, the groups and the work folder go
        throttle = read_throttle(work, int(args.throttle_mb_s * 1e6), group) if args.throttle_mb_s > 0 else None
        if isinstance(throttle, str):
            print(f"bench_out_of_core: --throttle-mb-s: {throttle}")
            return 2
        started = time.time()
        results: dict = {
            "command": " ".join(shlex.quote(a) for a in [sys.executable, *sys.argv]),
            "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "limit_bytes": limit,
            "cgroup": f"{group.path}/{group.limit_file}",
            "throttle_bytes_per_s": int(args.throttle_mb_s * 1e6),
            "throttle": f"{throttle.path}/{throttle.limit_file}" if throttle else "",
            "queue_depth": QUEUE_DEPTH,
            "cpus": os.cpu_count(),
            "cells": [],
            "fio": {},
            "fio_reps": {},
            "busy_before": cpu_busy(),
        }
        store = featstore.FeatureStore.create(work / "store")
        target = int(limit * args.ratio)
        shapes = {"vec768": ("vec/768", (768,), 1024), "patch 257x384": ("patch/257x384", (257, 384), 64)}
        sets = {}
        for name, (key, shape, bs) in shapes.items():
            n = -(-target // (int(np.prod(shape)) * 2))
            write_set(store, key, n, shape)
            store[key].export_pt(work / f"{key.replace('/', '_')}.pt")
            sets[f"{name} f16"] = (key, shape, bs)
        for dtype in [d for d in args.dtypes.split(",") if d != "float16"]:
            from featstore.store.convert import convert_store

            convert_store(work / "store", work / dtype, dtype)  # the same rows, compact
            for name, (key, shape, bs) in shapes.items():
                sets[f"{name} {dtype}"] = (f"../{dtype}:{key}", shape, bs)
        store = featstore.FeatureStore.open(work / "store")
        temps = ("cold", "warm") if args.warm else ("cold",)
        # each compact set runs beside its float16 twin in every repetition (in turn first), so the
        # disk's drift from minute to minute cancels in their ratio (compact_ratios pairs them)
        for shape in shapes:
            twins = [name for name in sets if name.rsplit(" ", 1)[0] == shape]
            for temp in temps:
                if temp == "cold":
                    # the ceilings are measured in every repetition, beside the readers; the report takes medians
                    results["fio_reps"].update({name: [] for name in twins})
                for rep in range(args.repeats):
                    for name in twins if rep % 2 == 0 else twins[::-1]:
                        run_cells(args, work, sets[name], name, temp, rep, (group, throttle), results)
        results["busy_after"] = cpu_busy()
        results["runtime_s"] = time.time() - started
    finally:
        for g in (throttle, group):
            if isinstance(g, Group):
                remove(g)
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    stem = args.out or ("out_of_core-quick" if args.quick else "out_of_core")
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / f"{stem}.json").write_text(json.dumps(results, indent=1) + "\n")
    (RESULTS / f"{stem}.md").write_text(report(results))
    print(report(results))
    return 0


def run_cells(args, work: Path, spec_set: tuple, name: str, temp: str, rep: int, groups: tuple, results: dict) -> None:
    """One repetition of set ``name``: fio's ceilings (cold), then every chosen reader in a fresh process
    in the cgroups (memory; the read throttle if any), the page cache dropped (cold) or filled (warm)
    before each; cells go into ``results``."""
    import featstore

    group, throttle = groups
    key, _, bs = spec_set
    root = work / "store"
    if key.startswith("../"):
        sub, key = key[3:].split(":")
        root = work / sub
    fs = featstore.FeatureStore.open(root)[key]
    pt = work / f"{key.replace('/', '_')}.pt"
    readers = FEATSTORE + (PEERS if name.endswith("f16") and temp == "cold" else [])
    if temp == "cold":
        results["fio_reps"][name].append(
            {
                "random": fio(fs.path, "randread", -(-fs.row_bytes // 4096) * 4096, QUEUE_DEPTH, 3, throttle),
                "sequential": fio(fs.path, "read", MIB, 16, 3, throttle),
            }
        )
        results["fio"][name] = median_ceilings(results["fio_reps"][name])
    chosen = [r for r in readers if args.readers in r]
    turn = rep % max(1, len(chosen))  # a reader's place in the rotation moves each repetition, so
    for reader in chosen[turn:] + chosen[:turn]:  # what follows fio (or a slow peer) varies
        if temp == "cold":
            drop_cache([fs.path, pt])
        else:
            with open(fs.path, "rb") as f:  # into the page cache (charged outside the cgroup)
                while f.read(64 * MIB):
                    pass
        spec = {
            "root": str(root),
            "key": key,
            "pt": str(pt),
            "batch": bs,
            "reader": reader,
            "rep": rep,
            "seconds": args.seconds,
            "cgroup_procs": list(dict.fromkeys(str(g.procs) for g in (group, throttle) if g is not None)),
        }
        t0 = time.time()
        out = subprocess.run(
            [sys.executable, __file__, "--worker", json.dumps(spec)],
            capture_output=True,
            text=True,
            timeout=600,
        )
        cell = {
            "set": name if temp == "cold" else f"{name} warm",
            "temp": temp,
            "reader": reader,
            "rep": rep,
        }
        cell.update(row_bytes=fs.row_bytes, bytes=fs.nbytes)
        if out.returncode == 0:
            cell.update(json.loads(out.stdout.strip().splitlines()[-1]))
        else:
            killed = out.returncode == -9
            cell["error"] = "OOM-killed" if killed else out.stderr.strip()[-400:]
        cell["wall_s"] = time.time() - t0
        results["cells"].append(cell)
        print(f"{name:22} {temp:4} {reader:40} rep {rep}: {_fmt_cell(cell)}", flush=True)


def _fmt_cell(cell: dict) -> str:
    if "error" in cell:
        return cell["error"][-120:]
    cpu = f", CPU {cell['cpu_s'] / cell['seconds']:.2f} cores" if "cpu_s" in cell else ""
    return f"{cell['rows'] / cell['seconds']:,.0f} rows/s, private {cell['private_bytes'] / MIB:.0f} MiB{cpu}"


def median_ceilings(ceilings: list[dict]) -> dict:
    """The median of each fio figure over the repetitions (an error if any repetition's fio failed)."""
    out = {}
    for kind in ("random", "sequential"):
        runs = [c[kind] for c in ceilings]
        bad = next((r for r in runs if "error" in r), None)
        if bad is not None:
            out[kind] = bad
            continue
        out[kind] = {**runs[0], **{k: statistics.median(r[k] for r in runs) for k in ("iops", "bytes_per_s")}}
        out[kind]["bytes_per_s_range"] = [min(r["bytes_per_s"] for r in runs), max(r["bytes_per_s"] for r in runs)]
    return out


def medians(results: dict) -> dict:
    table: dict = {}
    for cell in results["cells"]:
        table.setdefault((cell["set"], cell["reader"]), []).append(cell)
    out = {}
    for key, cells in table.items():
        ok = [c for c in cells if "error" not in c]
        if not ok:
            out[key] = {"error": cells[0]["error"]}
            continue
        rps = statistics.median(c["rows"] / c["seconds"] for c in ok)
        out[key] = {
            "rows_s": rps,
            "gb_s": rps * ok[0]["row_bytes"] / 1e9,
            "private_mib": max(c["private_bytes"] for c in ok) / MIB,
            "failed": len(cells) - len(ok),
            "read": ok[0].get("read", ""),
        }
    return out


def report(results: dict) -> str:
    med = medians(results)
    lines = [
        "# Out-of-core reads",
        "",
        f"Command: `{results['command']}`  ",
        f"Date: {results['date']}; memory cgroup `{results['cgroup']}` = {results['limit_bytes'] / MIB:.0f} MiB; "
        f"{results['cpus']} CPUs, busy {results['busy_before']:.0%} before and {results.get('busy_after', 0):.0%} "
        f"after ({load_note(results['busy_before'], results.get('busy_after', 0))}).  ",
        "Each cell: page cache dropped for the set's files, a fresh reader process in the cgroup, random batches "
        "(block order where named) for a fixed time; medians over the repetitions.",
        "",
    ]
    cap = results.get("throttle_bytes_per_s", 0)
    if cap:
        lines[-1:-1] = [
            f"Disk reads capped at {cap / 1e6:,.0f} MB/s for the readers and fio alike (`{results['throttle']}`), "
            "so cold cells are bound by that steady rate; x cap: bytes of rows delivered per second over the cap.",
        ]
    for name in dict.fromkeys(c["set"] for c in results["cells"]):
        f = results["fio"].get(name, {})
        row_bytes = next(c["row_bytes"] for c in results["cells"] if c["set"] == name)
        size = next(c["bytes"] for c in results["cells"] if c["set"] == name)
        rnd, seq = f.get("random", {}), f.get("sequential", {})
        fio_rows = rnd.get("iops", 0) / max(1, -(-row_bytes // 4096) * 4096 // 4096) if "iops" in rnd else 0
        if "iops" in rnd:
            fio_rows = rnd["iops"] * (rnd["bs"] // 4096) / -(-row_bytes // 4096)
        seq_rows = seq.get("bytes_per_s", 0) / row_bytes
        lines += [
            f"## {name}: {size / 1e9:.2f} GB, {row_bytes:,} bytes a row",
            "",
            f"fio ceilings (O_DIRECT, libaio): random {rnd.get('bs', 0) // 1024} KiB at QD {rnd.get('depth', '')}: "
            f"{rnd.get('iops', 0):,.0f} IOPS = {fio_rows:,.0f} rows/s; sequential 1 MiB at QD 16: "
            f"{seq.get('bytes_per_s', 0) / 1e9:.2f} GB/s = {seq_rows:,.0f} rows/s"
            + (
                " (medians of the repetitions; sequential ranged {:.2f}-{:.2f} GB/s)".format(
                    *(b / 1e9 for b in seq["bytes_per_s_range"])
                )
                if "bytes_per_s_range" in seq
                else ""
            )
            + (f" ({rnd.get('error', '')}{seq.get('error', '')})" if "error" in rnd or "error" in seq else ""),
            "",
            "| reader | path | rows/s | GB/s | private MiB | x fio random | x fio seq | x numpy memmap |"
            + (" x cap |" if cap else ""),
            "|---|---|---|---|---|---|---|---|" + ("---|" if cap else ""),
        ]
        memmap = med.get((name, "numpy memmap"), {}).get("rows_s")
        for reader in FEATSTORE + PEERS:
            m = med.get((name, reader))
            if m is None:
                continue
            if "error" in m:
                lines.append(f"| {reader} | | {m['error'][:60]} | | | | | |")
                continue
            r = m["rows_s"]
            lines.append(
                f"| {reader} | {m['read']} | {r:,.0f} | {m['gb_s']:.3f} | {m['private_mib']:.0f} | "
                f"{r / fio_rows if fio_rows else 0:.2f} | {r / seq_rows if seq_rows else 0:.2f} | "
                f"{r / memmap if memmap else 0:.1f} |"
                + (f" {m['gb_s'] * 1e9 / cap:.2f} |" if cap else "")
                + (f" ({m['failed']} failed)" if m["failed"] else "")
            )
        lines.append("")
    lines += compact_ratios(med, results["cells"])
    return "\n".join(lines) + "\n"


def compact_ratios(med: dict, cells: list[dict]) -> list[str]:
    """The int8 (float8) / float16 rows/s of each featstore reader, per set and page-cache state: the
    ratio of the medians, and the median of the ratios of the two cells of each repetition (run side by
    side, so the disk's drift cancels). The issue's target is 1.8x in every bandwidth-bound cell (the
    768-d cold random cell is IOPS-bound: a row of either dtype is one 4 KiB page read, so it cannot gain there)."""
    by_rep = {(c["set"], c["reader"], c["rep"]): c["rows"] / c["seconds"] for c in cells if "error" not in c}
    rows = []
    for (name, reader), m in med.items():
        if " f16" not in name or not reader.startswith("featstore") or "rows_s" not in m:
            continue
        for (other, reader2), m2 in med.items():
            twin = other.replace(" int8", " f16").replace(" float8_e4m3", " f16") == name
            if reader2 == reader and other != name and twin and "rows_s" in m2:
                paired = [
                    by_rep[other, reader, r] / f16
                    for (n, rd, r), f16 in by_rep.items()
                    if n == name and rd == reader and (other, reader, r) in by_rep
                ]
                pair = f"{statistics.median(paired):.2f} ({min(paired):.2f}-{max(paired):.2f})" if paired else ""
                rows.append(
                    f"| {name} | {other} | {reader} | {m['rows_s']:,.0f} | {m2['rows_s']:,.0f} | "
                    f"{m2['rows_s'] / m['rows_s']:.2f} | {pair} |"
                )
    if not rows:
        return []
    return [
        "## Compact sets against float16",
        "",
        "Paired: the median (and range) of compact / float16 over the repetitions, each pair read side by side.",
        "",
        "| float16 set | compact set | reader | f16 rows/s | compact rows/s | ratio of medians | paired ratio |",
        "|---|---|---|---|---|---|---|",
        *rows,
        "",
    ]


if __name__ == "__main__":
    sys.exit(main())
