"""Read-speed benchmark: shuffled-epoch batches from featstore vs the usual ways of serving features.

    .venv/bin/python benchmarks/bench_gather.py [--quick] [--workdir DIR] [--repeats 5] [--keep]

What it measures, all in one process on the same data with a warm page cache:

* pooled features, N=262144 x 768 in float16 and float32, batch sizes 1024 and 8192;
* patch grids, N=8192 x 257 x 384 float16 (197,376 bytes a row), batch sizes 64 and 256.

Each repetition draws a fresh permutation (``np.random.default_rng(rep)``) and every method serves
it batch by batch; methods run interleaved (in a rotated order) within a repetition, so machine
noise hits them alike. Before timing, each method runs one untimed epoch (page cache warm, pages
mapped). GB/s = bytes of features delivered / seconds; the tables give the median over
``--repeats`` repetitions (and min..max). Methods:

  featstore gather     fs.gather_into(idx, out) into one preallocated tensor (compiled gather)
  featstore batches    a full epoch of fs.batches(bs, seed=rep): prefetch thread, recycled buffers
  (a) copy ceiling     2 threads np.copyto the contiguous rows [b*bs, (b+1)*bs) of an in-RAM copy
  (b) index_select RAM torch.index_select on the matrix loaded into a regular tensor
  (c) safetensors mmap safe_open(framework="pt").get_tensor("features") + index_select
  (d) torch.load mmap  torch.load(fs.export_pt(), mmap=True, weights_only=True) + index_select
  (e) numpy memmap     np.memmap(fs.path, offset=data_start)[idx]
  (f) HF datasets      load_from_disk(...).with_format("torch")[idx_list]["features"]  (first K batches)
  (g) DataLoader       DataLoader(TensorDataset(t), batch_size=bs, shuffle=True)     (first K batches)
  (b1) (c1) (d1)       (b) (c) (d) with torch.set_num_threads(1) (supplementary)

Beside GB/s it records minor page faults per batch (fresh output memory), how busy other processes
kept the CPUs during each table (2 cores: any other load distorts everything), and peak RSS.

Open costs (open/load/map before the first batch) are timed separately and are not in the GB/s.
A subprocess measures memory: one shuffled epoch of fs.batches(256) over a >= 3 GB patch-grid set,
sampling RssAnon (private) and RssFile from /proc/self/status every batch.

Results go to benchmarks/results/gather.{json,md} (``--quick``: gather-quick.*, small sets, 1 repeat).
"""

from __future__ import annotations

import argparse
import datetime
import gc
import json
import os
import platform
import resource
import shlex
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from _machine import cpu_busy_share, cpu_counters, others_busy

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))  # benchmark the checkout (the same code an editable install uses)
RESULTS_DIR = REPO / "benchmarks" / "results"
MB = 1 << 20

# Method names, in table order.
GATHER = "featstore gather"
BATCHES = "featstore batches"
CEILING = "(a) copy ceiling"
RAM = "(b) torch.index_select in RAM"
SAFETENSORS = "(c) safetensors mmap + index_select"
TORCH_LOAD = "(d) torch.load(mmap=True) + index_select"
MEMMAP = "(e) numpy memmap fancy indexing"
HF = "(f) HF datasets with_format('torch')"
DATALOADER = "(g) DataLoader(TensorDataset)"
# Supplementary: the index_select peers with torch at 1 thread. On a 2-vCPU VM torch's default
# OpenMP pool (2 threads, spin-waiting) can cost milliseconds per parallel op; these rows show the
# peers without that handicap.
RAM_1T = "(b1) = (b), torch at 1 thread"
SAFETENSORS_1T = "(c1) = (c), torch at 1 thread"
TORCH_LOAD_1T = "(d1) = (d), torch at 1 thread"

POOLED_METHODS = [
    GATHER,
    BATCHES,
    CEILING,
    RAM,
    SAFETENSORS,
    TORCH_LOAD,
    MEMMAP,
    HF,
    DATALOADER,
    RAM_1T,
    SAFETENSORS_1T,
    TORCH_LOAD_1T,
]
PATCH_METHODS = [GATHER, BATCHES, CEILING, RAM, SAFETENSORS, MEMMAP, RAM_1T, SAFETENSORS_1T]
PARTIAL = {HF, DATALOADER}  # slow peers: only the first K batches of each repetition are timed


@dataclass
class SectionSpec:
    name: str
    key: str
    n_rows: int
    row_shape: tuple[int, ...]
    dtype: str
    batch_sizes: list[int]
    methods: list[str]
    seed: int = 0


@dataclass
class Runner:
    """One method at one batch size: ``prepare(rep, order)`` (untimed) returns what ``run`` (timed) takes;
    ``run`` serves the batches and returns the bytes of features it delivered."""

    prepare: Callable[[int, np.ndarray], Any]
    run: Callable[[Any], int]
    batches: int


@dataclass
class Measurement:
    seconds: list[float] = field(default_factory=list)
    faults: list[int] = field(default_factory=list)  # minor page faults of the process per repetition
    nbytes: int = 0
    batches: int = 0

    def gbs(self) -> list[float]:
        return [self.nbytes / s / 1e9 for s in self.seconds]

    def summary(self) -> dict[str, Any]:
        g = self.gbs()
        return {
            "median_gbs": statistics.median(g),
            "min_gbs": min(g),
            "max_gbs": max(g),
            "median_s": statistics.median(self.seconds),
            "seconds": self.seconds,
            "bytes_per_rep": self.nbytes,
            "batches_timed": self.batches,
            "minor_faults_per_batch": statistics.median(self.faults) / max(1, self.batches),
        }


# ---- small helpers ---------------------------------------------------------------------------
def timed(fn: Callable, *args) -> tuple[float, Any]:
    t0 = time.perf_counter()
    out = fn(*args)
    return time.perf_counter() - t0, out


def minor_faults() -> int:
    """Minor page faults of this process so far (all threads): fresh memory and newly mapped pages."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt


def proc_status() -> dict[str, int]:
    """VmHWM, VmRSS, RssAnon, RssFile of this process, in bytes."""
    out = {}
    with open("/proc/self/status") as f:
        for line in f:
            k, _, v = line.partition(":")
            if k in ("VmHWM", "VmRSS", "RssAnon", "RssFile"):
                out[k] = int(v.split()[0]) * 1024
    return out


def reset_peak_rss() -> None:
    """Reset VmHWM so each section reports its own peak (Linux >= 4.0)."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        pass


def machine_info() -> dict[str, Any]:
    import safetensors

    import datasets
    import featstore

    cpu = "unknown"
    with open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    with open("/proc/meminfo") as f:
        mem_kb = int(next(line for line in f if line.startswith("MemTotal")).split()[1])
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "ram_gib": round(mem_kb / 2**20, 1),
        "kernel": platform.release(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "numpy": np.__version__,
        "safetensors": safetensors.__version__,
        "datasets": datasets.__version__,
        "torch_threads": torch.get_num_threads(),
        "featstore_backend": featstore.backend(),
        "featstore_threads": featstore.get_num_threads(),
        "loadavg_start": os.getloadavg(),
        "cpu_busy_before_start": cpu_busy_share(),
    }


def command_line() -> str:
    def rel(p: str) -> str:
        try:
            return os.path.relpath(p, REPO) if os.path.isabs(p) else p
        except ValueError:
            return p

    return shlex.join([rel(sys.executable), rel(os.path.abspath(sys.argv[0])), *sys.argv[1:]])


def md_table(headers: list[str], rows: list[list[str]]) -> list[str]:
    widths = [max(len(str(x)) for x in col) for col in zip(headers, *rows)]
    fmt = lambda cells: "| " + " | ".join(str(c).ljust(w) for c, w in zip(cells, widths)) + " |"  # noqa: E731
    return [fmt(headers), "|" + "|".join("-" * (w + 2) for w in widths) + "|", *[fmt(r) for r in rows]]


def batch_slices(order: np.ndarray, bs: int, limit: int | None = None) -> list[np.ndarray]:
    n = len(order) // bs if limit is None else min(limit, len(order) // bs)
    return [order[b * bs : (b + 1) * bs] for b in range(n)]


# ---- data --------------------------------------------------------------------------------------
def write_feature_set(store, spec: SectionSpec) -> None:
    """Random rows (numpy uniform [0, 1), cast with torch) written through the featstore writer."""
    rng = np.random.default_rng(spec.seed)
    row_elems = int(np.prod(spec.row_shape))
    chunk = max(1, min(16384, (64 * MB) // (row_elems * np.dtype(spec.dtype).itemsize)))
    tdtype = getattr(torch, spec.dtype)
    with store.create_feature_set(
        spec.key, n_rows=spec.n_rows, row_shape=spec.row_shape, dtype=spec.dtype, metadata={}
    ) as w:
        for start in range(0, spec.n_rows, chunk):
            k = min(chunk, spec.n_rows - start)
            rows = torch.from_numpy(rng.random((k, *spec.row_shape), dtype=np.float32)).to(tdtype)
            w.write(start, rows)


def touch_pages(buf) -> None:
    """Read one byte of every page of a buffer, so its pages are cached and mapped."""
    flat = np.frombuffer(buf, dtype=np.uint8)
    int(flat[::4096].sum())


# ---- methods: each returns a Runner for one batch size ------------------------------------------
class Context:
    """What the methods of one section share: the feature set, peers' handles, in-RAM copy."""

    def __init__(self, spec: SectionSpec, fs, workdir: Path, k_batches: dict[int, int]):
        self.spec = spec
        self.fs = fs
        self.workdir = workdir
        self.k_batches = k_batches
        self.n = spec.n_rows
        self.row_bytes = fs.row_bytes
        self.tdtype = fs.dtype
        self.open_costs: dict[str, float] = {}
        self.notes: dict[str, str] = {}
        self.pool = ThreadPoolExecutor(max_workers=1)  # the copy ceiling's second thread
        self.ram: np.ndarray | None = None
        self.ram_t: torch.Tensor | None = None
        self.st_t: torch.Tensor | None = None
        self.pt_t: torch.Tensor | None = None
        self.mm: np.ndarray | None = None
        self.hf = None

    def close(self) -> None:
        self.pool.shutdown()
        self.ram = self.ram_t = self.st_t = self.pt_t = self.mm = self.hf = None


def m_featstore_gather(ctx: Context, bs: int) -> Runner:
    out = torch.empty((bs, *ctx.spec.row_shape), dtype=ctx.tdtype)

    def run(slices):
        for idx in slices:
            ctx.fs.gather_into(idx, out)
        return len(slices) * bs * ctx.row_bytes

    return Runner(lambda rep, order: batch_slices(order, bs), run, ctx.n // bs)


def m_featstore_batches(ctx: Context, bs: int) -> Runner:
    def run(rep):
        nbytes = 0
        for x, _, _ in ctx.fs.batches(bs, seed=rep):
            nbytes += x.numel() * x.element_size()
        return nbytes

    return Runner(lambda rep, order: rep, run, ctx.n // bs)


def m_copy_ceiling(ctx: Context, bs: int) -> Runner:
    out = np.empty((bs, *ctx.spec.row_shape), dtype=ctx.spec.dtype)
    half = bs // 2

    def run(_):
        src = ctx.ram
        for b in range(ctx.n // bs):
            lo = b * bs
            other = ctx.pool.submit(np.copyto, out[half:], src[lo + half : lo + bs])
            np.copyto(out[:half], src[lo : lo + half])
            other.result()
        return (ctx.n // bs) * bs * ctx.row_bytes

    return Runner(lambda rep, order: None, run, ctx.n // bs)


def _index_select_runner(ctx: Context, bs: int, source: Callable[[], torch.Tensor]) -> Runner:
    def prepare(rep, order):
        return [torch.from_numpy(idx) for idx in batch_slices(order, bs)]

    def run(idx_tensors):
        t = source()
        for idx in idx_tensors:
            torch.index_select(t, 0, idx)
        return len(idx_tensors) * bs * ctx.row_bytes

    return Runner(prepare, run, ctx.n // bs)


def m_index_select_ram(ctx: Context, bs: int) -> Runner:
    return _index_select_runner(ctx, bs, lambda: ctx.ram_t)


def m_safetensors(ctx: Context, bs: int) -> Runner:
    return _index_select_runner(ctx, bs, lambda: ctx.st_t)


def m_torch_load(ctx: Context, bs: int) -> Runner:
    return _index_select_runner(ctx, bs, lambda: ctx.pt_t)


def m_memmap(ctx: Context, bs: int) -> Runner:
    def run(slices):
        mm = ctx.mm
        for idx in slices:
            mm[idx]
        return len(slices) * bs * ctx.row_bytes

    return Runner(lambda rep, order: batch_slices(order, bs), run, ctx.n // bs)


def m_hf_datasets(ctx: Context, bs: int) -> Runner:
    k = ctx.k_batches[bs]

    def run(idx_lists):
        for idx in idx_lists:
            ctx.hf[idx]["features"]
        return len(idx_lists) * bs * ctx.row_bytes

    return Runner(lambda rep, order: [idx.tolist() for idx in batch_slices(order, bs, k)], run, k)


def m_dataloader(ctx: Context, bs: int) -> Runner:
    from torch.utils.data import DataLoader, TensorDataset

    k = ctx.k_batches[bs]
    dataset = TensorDataset(ctx.ram_t)

    def prepare(rep, order):
        # The epoch's setup (RandomSampler's randperm) is left out of the timing: it would weigh on
        # only K batches here, where a full epoch spreads it over N/bs.
        loader = DataLoader(dataset, batch_size=bs, shuffle=True, generator=torch.Generator().manual_seed(rep))
        it = iter(loader)
        next(it)
        return it

    def run(it):
        for _ in range(k):
            next(it)
        return k * bs * ctx.row_bytes

    return Runner(prepare, run, k)


def one_torch_thread(factory: Callable[[Context, int], Runner]) -> Callable[[Context, int], Runner]:
    """The same method with torch.set_num_threads(1) while it runs (the switch costs about a microsecond)."""

    def make(ctx: Context, bs: int) -> Runner:
        inner = factory(ctx, bs)

        def run(arg):
            threads = torch.get_num_threads()
            torch.set_num_threads(1)
            try:
                return inner.run(arg)
            finally:
                torch.set_num_threads(threads)

        return Runner(inner.prepare, run, inner.batches)

    return make


METHOD_FACTORIES = {
    GATHER: m_featstore_gather,
    BATCHES: m_featstore_batches,
    CEILING: m_copy_ceiling,
    RAM: m_index_select_ram,
    SAFETENSORS: m_safetensors,
    TORCH_LOAD: m_torch_load,
    MEMMAP: m_memmap,
    HF: m_hf_datasets,
    DATALOADER: m_dataloader,
    RAM_1T: one_torch_thread(m_index_select_ram),
    SAFETENSORS_1T: one_torch_thread(m_safetensors),
    TORCH_LOAD_1T: one_torch_thread(m_torch_load),
}


# ---- opening the peers (timed separately: "open cost") ----------------------------------------
def open_peers(ctx: Context) -> dict[str, Any]:
    """Open/load every peer's view of the data, timing each; returns facts about the safetensors path."""
    import safetensors

    spec, fs = ctx.spec, ctx.fs
    methods = spec.methods
    facts: dict[str, Any] = {}

    ctx.open_costs["load into RAM (np.array copy), for (a) (b) (g)"], ctx.ram = timed(np.array, fs.to_numpy())
    ctx.ram_t = torch.from_numpy(ctx.ram)

    if SAFETENSORS in methods:
        before = proc_status()

        def st_open():
            with safetensors.safe_open(str(fs.path), framework="pt") as f:
                return f.get_tensor("features")

        ctx.open_costs[SAFETENSORS], ctx.st_t = timed(st_open)
        after_open = proc_status()
        touch_pages(ctx.st_t.view(-1).view(torch.uint8).numpy())
        after_touch = proc_status()
        anon = after_touch["RssAnon"] - before["RssAnon"]
        filed = after_touch["RssFile"] - before["RssFile"]
        facts = {
            "file_bytes": fs.path.stat().st_size,
            "rss_anon_delta_after_get_tensor": after_open["RssAnon"] - before["RssAnon"],
            "rss_anon_delta_after_touching_all": anon,
            "rss_file_delta_after_touching_all": filed,
            "zero_copy": anon < 0.25 * fs.nbytes and filed > 0.5 * fs.nbytes,
        }

    if TORCH_LOAD in methods:
        t_export, pt_path = timed(fs.export_pt)
        ctx.notes["export_pt_s"] = f"{t_export:.2f}"
        ctx.open_costs[TORCH_LOAD], ctx.pt_t = timed(
            lambda: torch.load(pt_path, mmap=True, weights_only=True)["features"]
        )

    if MEMMAP in methods:
        ctx.open_costs[MEMMAP], ctx.mm = timed(
            lambda: np.memmap(fs.path, dtype=spec.dtype, mode="r", offset=fs.header.data_start, shape=fs.shape)
        )

    if HF in methods:
        t_build, path = timed(build_hf_dataset, ctx)
        ctx.notes["hf_build_and_save_s"] = f"{t_build:.2f}"
        ctx.open_costs[HF], ctx.hf = timed(open_hf_dataset, ctx, path)

    return facts


def build_hf_dataset(ctx: Context) -> Path:
    """An arrow dataset of the same rows (a fixed-size-list column of the stored dtype), saved to disk."""
    import pyarrow as pa

    import datasets

    datasets.disable_progress_bars()
    width = int(np.prod(ctx.spec.row_shape))
    column = pa.FixedSizeListArray.from_arrays(pa.array(ctx.ram.reshape(-1)), width)  # float16 -> arrow halffloat
    path = ctx.workdir / f"hf-{ctx.spec.dtype}"
    datasets.Dataset(pa.table({"features": column})).save_to_disk(str(path))
    del column
    pa.default_memory_pool().release_unused()
    return path


def open_hf_dataset(ctx: Context, path: Path):
    """load_from_disk (memory-maps the arrow files) + with_format("torch")."""
    import datasets

    ds = datasets.load_from_disk(str(path))
    # with_format("torch") turns float arrays into float32 unless told otherwise; the dtype
    # argument (a documented format kwarg) keeps the stored dtype so every method delivers the same bytes.
    return ds.with_format("torch", dtype=ctx.tdtype)


def warm_hf(ctx: Context) -> None:
    """Fault in every page of the arrow files' mappings (they are in the page cache since the write)."""
    for chunk in ctx.hf.data.table.column("features").chunks:
        for buf in chunk.buffers():
            if buf is not None and buf.size:
                touch_pages(buf)


# ---- one section --------------------------------------------------------------------------------
def check_same_rows(ctx: Context) -> None:
    """Every reader must return the same bytes for the same rows."""
    probe = np.random.default_rng(99).integers(0, ctx.n, 16)
    ref = ctx.fs.gather(probe)
    views = {RAM: ctx.ram_t[probe], MEMMAP: torch.from_numpy(np.asarray(ctx.mm[probe]))}
    if ctx.st_t is not None:
        views[SAFETENSORS] = ctx.st_t[probe]
    if ctx.pt_t is not None:
        views[TORCH_LOAD] = ctx.pt_t[probe]
    if ctx.hf is not None:
        views[HF] = ctx.hf[probe.tolist()]["features"]
    for name, got in views.items():
        if not torch.equal(ref, got):
            raise AssertionError(f"{name} returned other rows than featstore")


def time_methods(ctx: Context, bs: int, repeats: int) -> dict[str, dict[str, Any]]:
    """One untimed epoch per method, then ``repeats`` interleaved repetitions; summaries by method."""
    methods = ctx.spec.methods
    runners = {m: METHOD_FACTORIES[m](ctx, bs) for m in methods}
    warm_order = np.random.default_rng(10_000 + bs).permutation(ctx.n)
    for r in runners.values():  # page cache warm, pages mapped
        r.run(r.prepare(10_000, warm_order))
    meas = {m: Measurement(batches=runners[m].batches) for m in methods}
    for rep in range(repeats):
        order = np.random.default_rng(rep).permutation(ctx.n)
        shift = rep % len(methods)
        for m in methods[shift:] + methods[:shift]:
            r = runners[m]
            arg = r.prepare(rep, order)
            faults = minor_faults()
            seconds, nbytes = timed(r.run, arg)
            meas[m].faults.append(minor_faults() - faults)
            meas[m].seconds.append(seconds)
            meas[m].nbytes = nbytes
    return {m: meas[m].summary() for m in methods}


def run_section(spec: SectionSpec, workdir: Path, repeats: int, k_batches: dict[int, int], log) -> dict[str, Any]:
    """Write the section's set into its own store under workdir, open every peer, time every method."""
    from featstore import FeatureStore

    gc.collect()  # drop the previous section's mappings before measuring this one
    reset_peak_rss()
    rss_start = proc_status()
    t_section = time.perf_counter()
    root = workdir / f"store-{spec.name}"
    t_write, _ = timed(write_feature_set, FeatureStore.create(root), spec)
    t_open, fs = timed(lambda: FeatureStore.open(root)[spec.key])
    ctx = Context(spec, fs, workdir, k_batches)
    facts = open_peers(ctx)
    setup_peak = proc_status()["VmHWM"]  # writing, in-RAM copy, HF arrow build
    reset_peak_rss()
    ctx.open_costs = {f"{GATHER} / {BATCHES}: FeatureStore.open + [key]": t_open, **ctx.open_costs}
    if HF in spec.methods:
        warm_hf(ctx)
    log(f"  wrote {fs.nbytes / 1e9:.2f} GB in {t_write:.1f}s; peers opened")

    check_same_rows(ctx)

    results: dict[str, dict[str, Any]] = {}
    others: dict[str, float] = {}
    for bs in spec.batch_sizes:
        counters = cpu_counters()
        results[str(bs)] = time_methods(ctx, bs, repeats)
        others[str(bs)] = others_busy(counters)
        short = {m: m.split(" ", 1)[0] if m.startswith("(") else m for m in spec.methods}
        log(
            f"  batch {bs}: "
            + ", ".join(f"{short[m]}={s['median_gbs']:.2f}" for m, s in results[str(bs)].items())
            + " GB/s"
        )
    status = proc_status()
    out = {
        "name": spec.name,
        "key": spec.key,
        "n_rows": spec.n_rows,
        "row_shape": list(spec.row_shape),
        "dtype": spec.dtype,
        "row_bytes": fs.row_bytes,
        "features_bytes": fs.nbytes,
        "file_bytes": fs.path.stat().st_size,
        "write_s": t_write,
        "open_costs_s": ctx.open_costs,
        "notes": ctx.notes,
        "safetensors_get_tensor": facts,
        "peak_rss_setup_bytes": setup_peak,
        "peak_rss_bytes": status["VmHWM"],
        "rss_start": rss_start,
        "rss_end": status,
        "k_batches": {str(bs): k_batches[bs] for bs in spec.batch_sizes} if PARTIAL & set(spec.methods) else {},
        "results": results,
        "cpu_busy_by_others": others,
        "section_s": time.perf_counter() - t_section,
    }
    ctx.close()
    del fs, ctx
    gc.collect()
    return out


# ---- memory, in a subprocess ---------------------------------------------------------------------
def memory_child(root: str, key: str, batch_size: int, prefetch: int) -> None:
    """Runs in the subprocess: one shuffled epoch of fs.batches, RSS sampled every batch; prints JSON."""
    import featstore

    base = proc_status()
    fs = featstore.FeatureStore.open(root)[key]
    opened = proc_status()
    peak_anon, peak_file, n = opened["RssAnon"], opened["RssFile"], 0
    t0 = time.perf_counter()
    for _batch in fs.batches(batch_size, seed=0, prefetch=prefetch):
        s = proc_status()
        peak_anon, peak_file, n = max(peak_anon, s["RssAnon"]), max(peak_file, s["RssFile"]), n + 1
    seconds = time.perf_counter() - t0
    print(
        json.dumps(
            {
                "baseline": base,
                "after_open": opened,
                "peak_rss_anon": peak_anon,
                "peak_rss_file": peak_file,
                "batches": n,
                "epoch_s": seconds,
                "file_bytes": fs.path.stat().st_size,
                "features_bytes": fs.nbytes,
                "row_bytes": fs.row_bytes,
                "backend": featstore.backend(),
            }
        )
    )


def run_memory(spec: SectionSpec, workdir: Path, batch_size: int, prefetch: int, log) -> dict[str, Any]:
    """Write a >= 3 GB set into its own store and run memory_child on it in a fresh interpreter."""
    from featstore import FeatureStore

    root = workdir / "store-memory"
    t_write, _ = timed(write_feature_set, FeatureStore.create(root), spec)
    cmd = [
        sys.executable,
        str(Path(__file__).resolve()),
        "--memory-child",
        str(root),
        spec.key,
        str(batch_size),
        str(prefetch),
    ]
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep),
    }
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)
    if proc.returncode:
        raise RuntimeError(f"memory subprocess failed:\n{proc.stderr}")
    r = json.loads(proc.stdout.strip().splitlines()[-1])
    r["write_s"] = t_write
    r["batch_size"], r["prefetch"] = batch_size, prefetch
    r["prefetch_buffer_bytes"] = (prefetch + 1) * batch_size * r["row_bytes"]
    r["private_delta"] = r["peak_rss_anon"] - r["baseline"]["RssAnon"]
    r["limit_bytes"] = 100 * MB + r["prefetch_buffer_bytes"]
    log(
        f"  memory: peak RssAnon +{r['private_delta'] / MB:.0f} MB over the {r['baseline']['RssAnon'] / MB:.0f} MB baseline, "
        f"peak RssFile {r['peak_rss_file'] / MB:.0f} MB, file {r['file_bytes'] / MB:.0f} MB"
    )
    shutil.rmtree(root)
    return r


# ---- targets and report ---------------------------------------------------------------------------
def med(section: dict, bs: int, method: str) -> float:
    return section["results"][str(bs)][method]["median_gbs"]


def compute_targets(sections: dict[str, dict], memory: dict) -> tuple[list[dict], list[dict]]:
    f16, patch = sections["pooled-f16"], sections["patch-f16"]
    b16, bp = 1024, max(int(b) for b in patch["results"])
    mmap_peer = max(med(f16, b16, SAFETENSORS), med(f16, b16, TORCH_LOAD))

    def item(name, num, den, threshold=None):
        d = {"name": name, "ratio": num / den}
        if threshold is not None:
            d.update(threshold=threshold, passed=d["ratio"] >= threshold)
        return d

    targets = [
        item(f"float16 bs{b16}: featstore gather / max((c), (d))", med(f16, b16, GATHER), mmap_peer, 1.5),
        item(
            f"float16 bs{b16}: featstore gather / (a) copy ceiling", med(f16, b16, GATHER), med(f16, b16, CEILING), 0.75
        ),
        item(
            f"float16 bs{b16}: featstore batches / (g) DataLoader",
            med(f16, b16, BATCHES),
            med(f16, b16, DATALOADER),
            30,
        ),
        item(
            f"patch grid bs{bp}: featstore gather / (a) copy ceiling",
            med(patch, bp, GATHER),
            med(patch, bp, CEILING),
            0.85,
        ),
    ]
    mem_ok = memory["private_delta"] < memory["limit_bytes"]
    targets.append(
        {
            "name": f"memory: peak private (RssAnon) growth < 100 MB + prefetch buffers ({memory['prefetch_buffer_bytes'] / MB:.0f} MB)",
            "ratio": memory["private_delta"] / memory["limit_bytes"],
            "threshold": "< 1 (measured / limit)",
            "passed": mem_ok,
            "detail": f"+{memory['private_delta'] / MB:.0f} MB over the import baseline, limit {memory['limit_bytes'] / MB:.0f} MB; "
            f"absolute peak RssAnon {memory['peak_rss_anon'] / MB:.0f} MB",
        }
    )
    mmap_peer_1t = max(med(f16, b16, SAFETENSORS_1T), med(f16, b16, TORCH_LOAD_1T))
    informative = [
        item(
            f"float16 bs{b16}: featstore gather / max((c1), (d1)) (peers at 1 torch thread)",
            med(f16, b16, GATHER),
            mmap_peer_1t,
        ),
        item(f"float16 bs{b16}: featstore batches / max((c), (d))", med(f16, b16, BATCHES), mmap_peer),
        item(f"float16 bs{b16}: featstore batches / max((c1), (d1))", med(f16, b16, BATCHES), mmap_peer_1t),
        item(f"float16 bs{b16}: featstore batches / (a) copy ceiling", med(f16, b16, BATCHES), med(f16, b16, CEILING)),
        item(
            f"patch grid bs{bp}: featstore batches / (a) copy ceiling", med(patch, bp, BATCHES), med(patch, bp, CEILING)
        ),
    ]
    return targets, informative


def section_tables(sec: dict) -> list[str]:
    bss = list(sec["results"])
    methods = list(sec["results"][bss[0]])
    lines = [
        f"### {sec['name']}: {sec['n_rows']} rows x {tuple(sec['row_shape'])} {sec['dtype']} "
        f"({sec['row_bytes']} B/row, file {sec['file_bytes'] / 1e9:.2f} GB)",
        "",
        "GB/s delivered, median of the repetitions (min..max); faults/batch: minor page faults of the process per batch "
        f"(a fresh {sec['row_bytes']} B row costs {sec['row_bytes'] / 4096:.2g} if its output pages are new):",
        "",
    ]
    rows = []
    for m in methods:
        cells = [m + (" *" if m in PARTIAL else "")]
        for bs in bss:
            s = sec["results"][bs][m]
            cells.append(f"{s['median_gbs']:.2f} ({s['min_gbs']:.2f}..{s['max_gbs']:.2f})")
        cells += [f"{sec['results'][bs][m]['minor_faults_per_batch']:.0f}" for bs in bss]
        rows.append(cells)
    lines += md_table(["method"] + [f"batch {bs}" for bs in bss] + [f"faults/batch, {bs}" for bs in bss], rows)
    busy = ", ".join(f"{v:.0%} at batch {bs}" for bs, v in sec["cpu_busy_by_others"].items())
    lines += ["", f"Other processes kept the CPUs busy while this was measured: {busy}."]
    if sec["k_batches"]:
        ks = ", ".join(f"{k} batches at batch {bs}" for bs, k in sec["k_batches"].items())
        lines += ["", f"\\* only the first K batches of each repetition are timed ({ks})."]
    # Ratios: featstore vs each peer, at every batch size.
    peers = [m for m in methods if m not in (GATHER, BATCHES)]
    rows = []
    for ours in (GATHER, BATCHES):
        for bs in bss:
            rows.append(
                [f"{ours}, batch {bs}"]
                + [
                    f"{sec['results'][bs][ours]['median_gbs'] / sec['results'][bs][p]['median_gbs']:.2f}x"
                    for p in peers
                ]
            )
    lines += ["", "featstore / peer (medians):", ""] + md_table(["", *[p.split(" ", 1)[0] for p in peers]], rows)
    oc = sec["open_costs_s"]
    lines += ["", "Open cost (not in GB/s), seconds:", ""] + md_table(
        ["what", "s"], [[k, f"{v:.3f}"] for k, v in oc.items()]
    )
    st = sec["safetensors_get_tensor"]
    if st:
        lines += [
            "",
            f"safetensors get_tensor: {'zero-copy over the mmap' if st['zero_copy'] else 'a COPY into RAM'} "
            f"(RssAnon {st['rss_anon_delta_after_touching_all'] / MB:+.0f} MB, RssFile {st['rss_file_delta_after_touching_all'] / MB:+.0f} MB "
            f"after reading all {st['file_bytes'] / MB:.0f} MB).",
        ]
    r0, r1 = sec["rss_start"], sec["rss_end"]
    lines += [
        "",
        f"Memory: store file {sec['file_bytes'] / MB:.0f} MB. Process RSS at the section's start {r0['VmRSS'] / MB:.0f} MB; "
        f"at its end, every peer open and all its data read, {r1['VmRSS'] / MB:.0f} MB (private {r1['RssAnon'] / MB:.0f} MB, which holds the "
        f"{sec['features_bytes'] / MB:.0f} MB in-RAM copy for (a)/(b)/(g); file-backed {r1['RssFile'] / MB:.0f} MB: each mapping of the "
        f"data counts once per mapping). Peak RSS while the methods ran: {sec['peak_rss_bytes'] / MB:.0f} MB "
        f"(during setup: {sec['peak_rss_setup_bytes'] / MB:.0f} MB). Section took {sec['section_s']:.0f} s.",
        "",
    ]
    return lines


def write_report(report: dict, quick: bool) -> tuple[Path, Path]:
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    stem = "gather-quick" if quick else "gather"
    jpath, mpath = RESULTS_DIR / f"{stem}.json", RESULTS_DIR / f"{stem}.md"
    jpath.write_text(json.dumps(report, indent=2) + "\n")
    m = report["machine"]
    lines = [
        "# featstore read-speed benchmark" + (" (quick smoke run)" if quick else ""),
        "",
        f"Command: `{report['command']}`  ",
        f"Date: {report['date']}  ",
        f"Machine: {m['cpu']}, {m['cores']} cores, {m['ram_gib']} GiB RAM, Linux {m['kernel']}, Python {m['python']}  ",
        f"Versions: torch {m['torch']}, numpy {m['numpy']}, safetensors {m['safetensors']}, datasets {m['datasets']}  ",
        f"Threads: torch.get_num_threads() = {m['torch_threads']}; featstore backend `{m['featstore_backend']}` with {m['featstore_threads']} threads  ",
        f"CPU busy with other work: {m['cpu_busy_before_start']:.0%} in the second before the run, "
        f"{m['cpu_busy_by_others_during_run']:.0%} during it; load average at start / end: "
        f"{', '.join(f'{x:.2f}' for x in m['loadavg_start'])} / {', '.join(f'{x:.2f}' for x in m['loadavg_end'])}  ",
        f"Repetitions: {report['repeats']} per method (fresh permutation each); total runtime {report['runtime_s']:.0f} s",
        "",
    ]
    if m["featstore_backend"] != "core":
        lines += ["**WARNING: the compiled core was not in use; these are numpy-fallback numbers.**", ""]
    for note in report["notes"]:
        lines += [f"- {note}"]
    lines += ["", "## Results", ""]
    for sec in report["sections"].values():
        lines += section_tables(sec)
    mem = report["memory"]
    lines += [
        "### Memory (subprocess)",
        "",
        f"One shuffled epoch of `fs.batches({mem['batch_size']}, prefetch={mem['prefetch']})` over a "
        f"{mem['file_bytes'] / 1e9:.2f} GB patch-grid set ({mem['batches']} batches, {mem['epoch_s']:.1f} s), /proc/self/status sampled every batch:",
        "",
    ]
    lines += md_table(
        ["", "MB"],
        [
            ["file size", f"{mem['file_bytes'] / MB:.0f}"],
            ["RssAnon after imports (baseline)", f"{mem['baseline']['RssAnon'] / MB:.0f}"],
            ["RssAnon after FeatureStore.open", f"{mem['after_open']['RssAnon'] / MB:.0f}"],
            ["peak RssAnon (private)", f"{mem['peak_rss_anon'] / MB:.0f}"],
            ["peak RssAnon - baseline", f"{mem['private_delta'] / MB:.0f}"],
            ["peak RssFile (page-cache pages mapped, shared)", f"{mem['peak_rss_file'] / MB:.0f}"],
            ["prefetch buffers ((prefetch+1) x batch bytes)", f"{mem['prefetch_buffer_bytes'] / MB:.0f}"],
        ],
    )
    lines += ["", "## Targets", ""]
    lines += md_table(
        ["target", "measured", "needed", "result"],
        [
            [
                t["name"],
                f"{t['ratio']:.2f}" + (f" ({t['detail']})" if "detail" in t else ""),
                f">= {t['threshold']}" if not isinstance(t["threshold"], str) else t["threshold"],
                "PASS" if t["passed"] else "FAIL",
            ]
            for t in report["targets"]
        ],
    )
    lines += [
        "",
        "Informative (featstore batches includes the prefetch-thread handoff and a fresh tensor per batch; "
        "(c1)/(d1) are the peers with torch at 1 thread):",
        "",
    ]
    lines += md_table(["ratio", "measured"], [[t["name"], f"{t['ratio']:.2f}"] for t in report["informative"]])
    mpath.write_text("\n".join(lines) + "\n")
    return jpath, mpath


# ---- main -------------------------------------------------------------------------------------------
def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="small sets, 1 repeat; writes results/gather-quick.*")
    ap.add_argument("--workdir", default=None, help="where the data goes (a fresh folder is made inside; default /tmp)")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--keep", action="store_true", help="keep the data instead of deleting it")
    ap.add_argument("--memory-child", nargs=4, metavar=("ROOT", "KEY", "BS", "PREFETCH"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.memory_child:
        root, key, bs, prefetch = args.memory_child
        memory_child(root, key, int(bs), int(prefetch))
        return

    t_start = time.perf_counter()
    counters_start = cpu_counters()
    repeats = 1 if args.quick else args.repeats
    n_pooled, n_patch, n_memory = (32768, 1024, 2048) if args.quick else (262144, 8192, 16384)
    k_batches = {1024: 10, 8192: 3}
    sections = [
        SectionSpec("pooled-f16", "bench/f16", n_pooled, (768,), "float16", [1024, 8192], POOLED_METHODS, seed=1),
        SectionSpec("pooled-f32", "bench/f32", n_pooled, (768,), "float32", [1024, 8192], POOLED_METHODS, seed=2),
        SectionSpec("patch-f16", "bench/patch", n_patch, (257, 384), "float16", [64, 256], PATCH_METHODS, seed=3),
    ]
    memory_spec = SectionSpec("memory", "bench/memory", n_memory, (257, 384), "float16", [256], [], seed=4)
    base = Path(args.workdir) if args.workdir else Path(tempfile.gettempdir())
    base.mkdir(parents=True, exist_ok=True)
    workdir = Path(tempfile.mkdtemp(prefix="featstore-bench-", dir=base))

    def log(msg: str) -> None:
        print(f"[{time.perf_counter() - t_start:6.1f}s] {msg}", flush=True)

    machine = machine_info()
    log(
        f"workdir {workdir}; featstore backend {machine['featstore_backend']} ({machine['featstore_threads']} threads), "
        f"torch threads {machine['torch_threads']}, CPU busy before start {machine['cpu_busy_before_start']:.0%}"
    )
    if machine["cpu_busy_before_start"] > 0.2:
        log("WARNING: the machine is busy with other work; timings will be noisy")
    if machine["featstore_backend"] != "core":
        log("WARNING: the compiled core is not in use; numbers are for the numpy fallback")
    try:
        done: dict[str, dict] = {}
        for spec in sections:
            log(f"{spec.name}: {spec.n_rows} x {spec.row_shape} {spec.dtype}")
            done[spec.name] = run_section(spec, workdir, repeats, k_batches, log)
            # Free the disk and page cache before the next section.
            shutil.rmtree(workdir / f"store-{spec.name}", ignore_errors=True)
            shutil.rmtree(workdir / f"hf-{spec.dtype}", ignore_errors=True)
        log(f"memory: {n_memory} x (257, 384) float16 in a subprocess")
        memory = run_memory(memory_spec, workdir, 256, 2, log)
    finally:
        if not args.keep:
            shutil.rmtree(workdir, ignore_errors=True)
    targets, informative = compute_targets(done, memory)
    machine["loadavg_end"] = os.getloadavg()
    machine["cpu_busy_by_others_during_run"] = others_busy(counters_start)
    notes = [
        "Data: random uniform [0, 1) rows written with the featstore writer. Same permutation per repetition for featstore gather, (a)-(f) "
        "(np.random.default_rng(rep)); featstore batches uses its own seeded permutation (seed=rep) and (g) torch's RandomSampler "
        "(generator seeded with rep): equally random, not the same rows.",
        "Each method ran one untimed epoch first (page cache warm, pages mapped); methods are interleaved in a rotated order within a repetition.",
        f"(f) and (g) are timed on the first K batches of each repetition only ({k_batches[1024]} at batch 1024, {k_batches[8192]} at batch 8192); "
        "(g) excludes the epoch's sampler setup (first batch pulled untimed).",
        "(f) stores float16 as arrow halffloat (float32 as float); with_format('torch', dtype=<stored dtype>) so it delivers the same bytes "
        "(plain with_format('torch') would upcast float16 to float32).",
        "featstore gather writes into one preallocated tensor; featstore batches, (b)-(g) allocate a fresh tensor per batch; (a) copies into one buffer.",
    ]
    if args.quick:
        notes.append(
            f"QUICK run: {n_pooled} pooled rows, {n_patch} patch rows, memory set {n_memory} rows (< 3 GB), 1 repeat."
        )
    report = {
        "command": command_line(),
        "date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
        "machine": machine,
        "repeats": repeats,
        "quick": args.quick,
        "k_batches": k_batches,
        "notes": notes,
        "sections": done,
        "memory": memory,
        "targets": targets,
        "informative": informative,
        "runtime_s": time.perf_counter() - t_start,
    }
    jpath, mpath = write_report(report, args.quick)
    print()
    print(mpath.read_text())
    log(f"wrote {jpath.relative_to(REPO)} and {mpath.relative_to(REPO)}")


if __name__ == "__main__":
    main()
