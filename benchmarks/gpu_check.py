"""One-command GPU check: the three device paths are bit-exact, and how fast each is against its ceiling.

    python benchmarks/gpu_check.py [--quick] [--repeats 5] [--workdir /tmp] [--no-install] [--allow-skip]

Needs one CUDA GPU and torch; no network. When ``featstore._cuda`` is not importable, the script first
runs ``pip install --no-build-isolation --no-deps -e <repo>`` (nvcc, cmake, ninja, pybind11 and
scikit-build-core must be installed, as they are on the GPU machines) and starts again; pass
``--no-install`` to refuse that. Without a CUDA GPU it exits with status 2 and writes nothing.

1. Bit-exactness, against the CPU gather (``fs.gather``), of every path of ``fs.batches(device="cuda",
   cache=...)``: "device" (the set copied to the GPU once, ``index_select`` there), "uva" (the CUDA
   kernel over the registered file pages), "pinned" (CPU gather into pinned buffers, async copies),
   plus ``featstore.batches.cuda.gather`` itself. float16, bfloat16, float32; pooled rows (768,) and
   patch-grid rows (50, 33) (row bytes not a multiple of 16, so the kernel's narrower loads run
   too); the first rows, the last rows and random rows (with repeats); batch sizes 1, 1024, 8192.
   Rows hold NaN, -0.0 and +-inf too; results are compared as bytes, labels and row numbers as well.
2. GB/s of each path, in the same run, against its ceiling (medians of ``--repeats``, shuffled
   epochs, one untimed warm-up epoch each): a pinned host-to-device ``copy_`` of the same bytes per
   batch for "pinned", "uva" and the bare kernel; ``index_select`` on the device for "device".
   Sets: pooled 262,144 x 768 float16 (batches 1024, 8192), patch grid 2,048 x 257 x 384 float16
   (batches 64, 256).
3. A linear-probe training step (768 -> 10, SGD) fed by ``fs.batches`` per path, against the same
   steps on batches already on the device.
4. The direct read path: ``cache="pinned", read="direct"`` (preadv into the pinned buffers) against the
   CPU gather, bit for bit.
5. ``benchmarks/gpu_check_quant.py``'s ``run_stage()`` where that file exists ("not available" otherwise).

The stages are the list ``STAGES`` (one line adds one). Each stage's result, or its exception with
its traceback, is recorded as it finishes, and the JSON is rewritten after every stage, so a crash
or a timeout keeps everything finished before it.

Targets (issue 6): staging >= 0.8x the pinned copy at batch 8192 x 768 float16; the kernel >= 0.7x the
pinned copy for rows of 1 KB or more; the device cache >= 0.8x on-device index_select; the probe step
fed by fs.batches (cache="auto") within 1.1x of the step on resident batches.
Prints the tables and writes benchmarks/results/gpu_check.{json,md} (``--quick``: gpu_check-quick.*,
small sets, 1 repeat).

Exit status (the first that applies):

- 1: a path differed from the CPU gather;
- 5: a stage crashed (its exception is in the JSON; the other stages still ran);
- 4: a check was skipped (the kernel/UVA checks when the kernel path cannot run) and ``--allow-skip``
  was not given;
- 2: no CUDA GPU (nothing written); 3: featstore._cuda cannot be built or used (nothing written);
- 0: every stage ran and every path was exact.
"""

from __future__ import annotations

import argparse
import datetime
import importlib.util
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
RESULTS_DIR = REPO / "benchmarks" / "results"
PATHS = ("device", "uva", "pinned")
DTYPES = {"float16": torch.float16, "bfloat16": torch.bfloat16, "float32": torch.float32}


def stop(message: str, status: int) -> None:
    print(f"gpu_check: {message}", file=sys.stderr)
    sys.exit(status)


def ensure_gpu_and_module(no_install: bool) -> None:
    """Exit (nothing written) without a CUDA GPU; build featstore._cuda when it is missing."""
    if not torch.cuda.is_available():
        stop(
            f"no CUDA GPU here (torch {torch.__version__}, CUDA build {torch.version.cuda}, "
            "torch.cuda.is_available() is False); run this on a CUDA machine. Nothing was written.",
            2,
        )
    if importlib.util.find_spec("featstore") is None or importlib.util.find_spec("featstore._cuda") is None:
        command = [sys.executable, "-m", "pip", "install", "--no-build-isolation", "--no-deps", "-e", str(REPO)]
        if no_install:
            stop(f"featstore._cuda is not installed; run `{' '.join(command[2:])}` (needs nvcc) and try again", 3)
        print(f"gpu_check: featstore._cuda is missing; building it: {' '.join(command)}", flush=True)
        if subprocess.run(command).returncode != 0:
            stop("the build failed (see above): it needs nvcc, cmake, ninja, pybind11 and scikit-build-core", 3)
        os.execv(sys.executable, [sys.executable, *sys.argv, "--no-install"])
    import featstore
    import featstore.batches.cuda

    if featstore.backend() != "core":
        stop("featstore's compiled core is not in use (FEATSTORE_PUREPYTHON set, or it failed to import)", 3)
    status = featstore.batches.cuda.status()
    if not status.usable:
        stop(f"featstore._cuda cannot use the GPU: {status.why}", 3)


# ---- data ---------------------------------------------------------------------------------------
def write_set(store, key: str, n: int, row_shape: tuple[int, ...], dtype: torch.dtype, seed: int, special: bool):
    """Random normal rows (chunked), labels i % 10; with ``special``, row 0 starts NaN, -0.0, inf, -inf."""
    gen = torch.Generator().manual_seed(seed)
    row_elems = int(np.prod(row_shape))
    chunk = max(1, (32 << 20) // (4 * row_elems))
    with store.create_feature_set(key, n, row_shape, dtype, {"seed": seed}, np.arange(n) % 10) as w:
        for start in range(0, n, chunk):
            rows = torch.randn((min(chunk, n - start), row_elems), generator=gen)
            if special and start == 0:
                rows[0, :4] = torch.tensor([float("nan"), -0.0, float("inf"), float("-inf")])
            w.write(start, rows.to(dtype).view(-1, *row_shape))
    return store.refresh()[key]


def same_bits(a: torch.Tensor, b: torch.Tensor) -> bool:
    a = a.detach().cpu().contiguous()
    return (
        a.shape == b.shape and a.dtype == b.dtype and torch.equal(a.view(torch.uint8), b.contiguous().view(torch.uint8))
    )


# ---- 1. bit-exactness ---------------------------------------------------------------------------
def index_sets(n: int, bs: int, rng: np.random.Generator) -> dict[str, np.ndarray]:
    return {
        "first": np.arange(bs, dtype=np.int64),
        "last": np.arange(n - bs, n, dtype=np.int64),
        "random": rng.integers(0, n, bs, dtype=np.int64),
    }


def one_batch(fs, idx: np.ndarray, path: str):
    """The single batch of a loader over exactly the rows ``idx``, in order, through ``path``."""
    if path == "kernel":
        import featstore.batches.cuda

        return featstore.batches.cuda.gather(fs, idx), None, None
    loader = fs.batches(len(idx), shuffle=False, rows=idx, device="cuda", cache=path, prefetch=0)
    if loader.info["path"] != path:
        raise AssertionError(f"cache={path!r} ran {loader.info}")
    (batch,) = list(loader)
    return batch


def check_exactness(workdir: Path, quick: bool, uva_ok: bool) -> dict[str, Any]:
    from featstore import FeatureStore

    batch_sizes = [1, 64] if quick else [1, 1024, 8192]
    n = max(batch_sizes) + 811
    shapes = {"pooled (768,)": (768,), "patch grid (50, 33)": (50, 33)}
    paths = list(PATHS) + ["kernel"] if uva_ok else ["device", "pinned"]
    store = FeatureStore.create(workdir / "exact")
    rng = np.random.default_rng(0)
    checks, failures = [], []
    for (shape_name, shape), (dtype_name, dtype) in [(s, d) for s in shapes.items() for d in DTYPES.items()]:
        key = f"exact/{dtype_name}-{'x'.join(map(str, shape))}"
        fs = write_set(store, key, n, shape, dtype, seed=len(checks), special=True)
        for bs in batch_sizes:
            for kind, idx in index_sets(n, bs, rng).items():
                want = fs.gather(idx)
                for path in paths:
                    x, y, rows = one_batch(fs, idx, path)
                    torch.cuda.synchronize()
                    ok = same_bits(x, want)
                    if y is not None:
                        ok = ok and torch.equal(y.cpu(), fs.labels[idx]) and torch.equal(rows, torch.from_numpy(idx))
                    record = {
                        "dtype": dtype_name,
                        "rows": shape_name,
                        "batch": bs,
                        "indices": kind,
                        "path": path,
                        "exact": ok,
                    }
                    checks.append(record)
                    if not ok:
                        failures.append(record)
        del fs
    return {
        "checks": len(checks),
        "exact": len(checks) - len(failures),
        "failures": failures,
        "paths": paths,
        "skipped": [] if uva_ok else ["uva", "kernel"],
        "status": "inexact" if failures else ("skipped" if not uva_ok else "ok"),
        "n_rows": n,
        "batch_sizes": batch_sizes,
        "table": checks,
    }


# ---- 2. throughput ------------------------------------------------------------------------------
def timed(fn: Callable[[int], None], repeats: int) -> list[float]:
    """Seconds of ``fn(rep)`` per repetition, from a synchronized start to a synchronized end."""
    fn(-1)  # warm-up: pages mapped, caches filled, pinned blocks allocated
    seconds = []
    for rep in range(repeats):
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        fn(rep)
        torch.cuda.synchronize()
        seconds.append(time.perf_counter() - t0)
    return seconds


def epoch_batches(n: int, bs: int, rep: int) -> list[np.ndarray]:
    order = np.random.default_rng(rep + 1).permutation(n).astype(np.int64)
    return [order[i * bs : (i + 1) * bs] for i in range(n // bs)]


def measure_set(fs, bs: int, repeats: int, uva_ok: bool) -> dict[str, dict[str, Any]]:
    import featstore.batches.cuda as fcuda

    dev = torch.device("cuda", torch.cuda.current_device())
    n_batches = len(fs) // bs
    nbytes = n_batches * bs * fs.row_bytes
    methods: dict[str, Callable[[int], None]] = {}

    host = torch.empty((bs, *fs.row_shape), dtype=fs.dtype, pin_memory=True)
    target = torch.empty((bs, *fs.row_shape), dtype=fs.dtype, device=dev)

    def pinned_copy(rep):
        for _ in range(n_batches):
            target.copy_(host, non_blocking=True)

    resident = fs.to_torch().to(dev)
    epochs = {rep: epoch_batches(len(fs), bs, rep) for rep in range(-1, repeats)}  # made before any timing
    device_idx = {rep: [torch.from_numpy(b).to(dev) for b in batches] for rep, batches in epochs.items()}

    def index_select(rep):
        for idx in device_idx[rep]:
            torch.index_select(resident, 0, idx)

    methods["ceiling: pinned copy_ H2D"] = pinned_copy
    methods["ceiling: index_select on device"] = index_select

    loaders = {}
    for path in PATHS if uva_ok else ("device", "pinned"):
        loaders[path] = fs.batches(bs, device="cuda", cache=path, prefetch=4, drop_last=True)

        def serve(rep, loader=loaders[path]):
            loader.set_epoch(max(rep, 0))
            for _ in loader:
                pass

        methods[f"fs.batches cache={path!r}"] = serve

    if uva_ok:
        src = fcuda.REGISTRY.device_pointer(fs, dev.index)
        plans = {
            rep: [torch.from_numpy(fcuda.sorted_plan(b)).to(dev) for b in batches] for rep, batches in epochs.items()
        }

        def kernel(rep):
            stream = torch.cuda.current_stream(dev)
            for plan in plans[rep]:
                out = torch.empty((bs, *fs.row_shape), dtype=fs.dtype, device=dev)
                fcuda.launch_gather(fs, src, plan, out, stream)

        methods["kernel alone (indices on device)"] = kernel

    results = {}
    for name, fn in methods.items():
        seconds = timed(fn, repeats)
        gbs = [nbytes / s / 1e9 for s in seconds]
        results[name] = {
            "median_gbs": statistics.median(gbs),
            "min_gbs": min(gbs),
            "max_gbs": max(gbs),
            "seconds": seconds,
        }
    return {"bytes_per_epoch": nbytes, "batches": n_batches, "methods": results}


def ratio(sec: dict, method: str, ceiling: str) -> float | None:
    m = sec["methods"]
    return m[method]["median_gbs"] / m[ceiling]["median_gbs"] if method in m and ceiling in m else None


# ---- 3. probe step ------------------------------------------------------------------------------
def probe_steps(fs, bs: int, repeats: int, uva_ok: bool) -> dict[str, Any]:
    dev = torch.device("cuda", torch.cuda.current_device())
    torch.manual_seed(0)
    head = torch.nn.Linear(fs.row_shape[-1], 10).to(dev)
    opt = torch.optim.SGD(head.parameters(), lr=0.01)

    def step(x, y):
        loss = torch.nn.functional.cross_entropy(head(x.float()), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    loaders = {"auto": fs.batches(bs, device="cuda", drop_last=True)}
    for path in PATHS if uva_ok else ("device", "pinned"):
        loaders[path] = fs.batches(bs, device="cuda", cache=path, drop_last=True)
    resident = [(x.clone(), y.clone()) for x, y, _ in loaders["auto"]]

    def on_device(rep):
        for x, y in resident:
            step(x, y)

    out: dict[str, Any] = {"auto_info": loaders["auto"].info, "batch": bs, "batches": len(resident)}
    base = statistics.median(timed(on_device, repeats))
    out["resident_s"] = base
    for name, loader in loaders.items():

        def fed(rep, loader=loader):
            loader.set_epoch(max(rep, 0))
            for x, y, _ in loader:
                step(x, y)

        s = statistics.median(timed(fed, repeats))
        out[f"fed cache={name!r}"] = {"seconds": s, "ratio_to_resident": s / base}
    return out


# ---- 4. the direct read path ---------------------------------------------------------------------
def check_direct(workdir: Path, quick: bool) -> dict[str, Any]:
    """``cache="pinned", read="direct"``: preadv into the pinned ring, compared with the CPU gather."""
    from featstore import FeatureStore

    store = FeatureStore.create(workdir / "direct")
    n, rng, checks, failures = (4_096 if quick else 40_000), np.random.default_rng(1), 0, []
    for name, shape in {"pooled (768,)": (768,), "patch grid (50, 33)": (50, 33)}.items():
        fs = write_set(store, f"direct/{'x'.join(map(str, shape))}", n, shape, torch.float16, seed=7, special=True)
        for bs in (1, 1024):
            for kind, idx in index_sets(n, bs, rng).items():
                loader = fs.batches(
                    bs, shuffle=False, rows=idx, device="cuda", cache="pinned", read="direct", prefetch=1
                )
                if loader.info["read"] != "direct":
                    raise AssertionError(f"read='direct' ran {loader.info}")
                ((x, y, rows),) = list(loader)
                torch.cuda.synchronize()
                ok = same_bits(x, fs.gather(idx)) and torch.equal(y.cpu(), fs.labels[idx])
                checks += 1
                if not ok:
                    failures.append({"rows": name, "batch": bs, "indices": kind})
        del fs
    return {
        "checks": checks,
        "exact": checks - len(failures),
        "failures": failures,
        "status": "inexact" if failures else "ok",
    }


# ---- report -------------------------------------------------------------------------------------
def machine_info() -> dict[str, Any]:
    import featstore
    import featstore.batches.cuda as fcuda

    dev = torch.cuda.current_device()
    props = torch.cuda.get_device_properties(dev)
    with open("/proc/cpuinfo") as f:
        cpu = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), "?")
    mod = fcuda.module()
    return {
        "gpu": props.name,
        "gpu_memory_gib": round(props.total_memory / 2**30, 1),
        "gpu_free_gib_at_start": round(torch.cuda.mem_get_info()[0] / 2**30, 1),
        "gpus": torch.cuda.device_count(),
        "torch": torch.__version__,
        "torch_cuda": torch.version.cuda,
        "kernel": platform.release(),
        "cpu": cpu,
        "cores": os.cpu_count(),
        "python": platform.python_version(),
        "featstore_threads": featstore.get_num_threads(),
        "read_only_register_supported": None if mod is None else bool(mod.read_only_register_supported(dev)),
    }


def targets(sections: dict[str, dict], probe: dict) -> list[dict[str, Any]]:
    pinned = "ceiling: pinned copy_ H2D"
    rows = []

    def add(name, value, goal, higher=True):
        met = None if value is None else (value >= goal if higher else value <= goal)
        rows.append({"target": name, "value": value, "goal": goal, "met": met})

    stage = sections.get("pooled 768 float16, batch 8192")
    add(
        "staging (cache='pinned') / pinned copy, 8192 x 768 f16",
        stage and ratio(stage, "fs.batches cache='pinned'", pinned),
        0.8,
    )
    for name, sec in sections.items():
        add(f"kernel / pinned copy, {name}", ratio(sec, "kernel alone (indices on device)", pinned), 0.7)
        add(
            f"device cache / index_select, {name}",
            ratio(sec, "fs.batches cache='device'", "ceiling: index_select on device"),
            0.8,
        )
    fed = probe.get("fed cache='auto'")
    add("probe step fed by fs.batches (auto) / resident", fed and fed["ratio_to_resident"], 1.1, higher=False)
    return rows


def fmt(x: float | None, digits: int = 2) -> str:
    return "-" if x is None else f"{x:.{digits}f}"


def _md_sections(result: dict[str, Any], md_table) -> list[str]:
    """The tables of the stages that finished (a stage that did not leaves its section out)."""
    stages, lines = result["stages"], []
    ex = stages.get("exactness", {}).get("result")
    if ex:
        skipped = f" Not checked: {', '.join(ex['skipped'])} ({result['uva_why']})." if ex["skipped"] else ""
        lines += [
            "## Bit-exactness against the CPU gather",
            "",
            f"{ex['exact']} of {ex['checks']} batches identical byte for byte (paths: {', '.join(ex['paths'])}; "
            f"batch sizes {ex['batch_sizes']}; first/last/random rows; float16, bfloat16, float32; pooled and "
            f"patch-grid rows).{skipped}",
            "",
        ]
        if ex["failures"]:
            lines += md_table(list(ex["failures"][0]), [list(map(str, f.values())) for f in ex["failures"]]) + [""]
    direct = stages.get("direct", {}).get("result")
    if direct:
        lines += [f"Direct reads into pinned buffers: {direct['exact']} of {direct['checks']} batches exact.", ""]
    sections = stages.get("throughput", {}).get("result")
    if sections:
        rows = [
            [name, method, f"{m['median_gbs']:.1f} ({m['min_gbs']:.1f}..{m['max_gbs']:.1f})"]
            for name, sec in sections.items()
            for method, m in sec["methods"].items()
        ]
        lines += ["## GB/s (median of the repetitions, min..max)", ""] + md_table(
            ["set, batch", "method", "GB/s"], rows
        )
        probe = stages.get("probe", {}).get("result") or {}
        lines += ["", "## Targets", ""] + md_table(
            ["target", "value", "goal", "met"],
            [
                [
                    t["target"],
                    fmt(t["value"]),
                    ("<= " if "probe" in t["target"] else ">= ") + str(t["goal"]),
                    str(t["met"]),
                ]
                for t in targets(sections, probe)
            ],
        )
    pr = stages.get("probe", {}).get("result")
    if pr:
        lines += [
            "",
            f"## Linear-probe step ({pr['batches']} batches of {pr['batch']}; auto picked "
            f"{pr['auto_info']['path']!r}: {pr['auto_info']['why']})",
            "",
        ]
        prow = [["batches already on the device", f"{pr['resident_s'] * 1e3:.1f}", "1.00"]]
        prow += [
            [k, f"{v['seconds'] * 1e3:.1f}", f"{v['ratio_to_resident']:.2f}"]
            for k, v in pr.items()
            if k.startswith("fed")
        ]
        lines += md_table(["fed by", "ms per epoch", "ratio"], prow)
    return lines


def report_md(result: dict[str, Any]) -> str:
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from bench_gather import md_table

    m = result.get("machine") or (result["stages"].get("machine") or {}).get("result") or {}
    lines = [
        "# GPU check (`benchmarks/gpu_check.py`)",
        "",
        f"Run {result.get('date', '?')} with `{result.get('command', '?')}` on {m.get('gpu', '?')} ({m.get('gpu_memory_gib', '?')} GiB), "
        f"torch {m.get('torch', '?')} (CUDA {m.get('torch_cuda', '?')}), {m.get('cores', '?')} CPUs ({m.get('cpu', '?')}); "
        f"exit status {result.get('exit_status', 'pending')}.",
        "",
    ]
    lines += md_table(
        ["stage", "status", "seconds", "note"],
        [[k, v["status"], f"{v['seconds']:.1f}", v.get("note", "")] for k, v in result["stages"].items()],
    )
    lines.append("")
    try:
        lines += _md_sections(result, md_table)
    except Exception as exc:  # a report bug must not hide the JSON's results
        lines += [f"(tables not rendered: {type(exc).__name__}: {exc})"]
    return "\n".join(lines) + "\n"


# ---- the stages ---------------------------------------------------------------------------------
def stage_machine(ctx: dict[str, Any]) -> dict[str, Any]:
    return machine_info()


def stage_exactness(ctx: dict[str, Any]) -> dict[str, Any]:
    return check_exactness(ctx["work"], ctx["quick"], ctx["uva_ok"])


def stage_direct(ctx: dict[str, Any]) -> dict[str, Any]:
    return check_direct(ctx["work"], ctx["quick"])


def stage_throughput(ctx: dict[str, Any]) -> dict[str, Any]:
    from featstore import FeatureStore

    store = FeatureStore.create(ctx["work"] / "speed")
    specs = [
        ("pooled 768 float16", 262_144, (768,), [1024, 8192]),
        ("patch 257x384 float16", 2_048, (257, 384), [64, 256]),
    ]
    if ctx["quick"]:
        specs = [("pooled 768 float16", 16_384, (768,), [1024]), ("patch 257x384 float16", 256, (257, 384), [64])]
    sections = {}
    for i, (name, n, shape, batch_sizes) in enumerate(specs):
        fs = write_set(store, f"speed/{i}", n, shape, torch.float16, seed=100 + i, special=False)
        if i == 0:
            ctx["probe_set"], ctx["probe_batch"] = fs, batch_sizes[-1]
        for bs in batch_sizes:
            sections[f"{name}, batch {bs}"] = measure_set(fs, bs, ctx["repeats"], ctx["uva_ok"])
            torch.cuda.empty_cache()  # the copies of the set that measure_set held on the device
            print(f"  {name}, batch {bs}: done", flush=True)
        del fs
    return sections


def stage_probe(ctx: dict[str, Any]) -> dict[str, Any]:
    if "probe_set" not in ctx:
        return {"status": "skipped", "note": "the throughput stage made no set"}
    return probe_steps(ctx.pop("probe_set"), ctx["probe_batch"], ctx["repeats"], ctx["uva_ok"])


def stage_quant(ctx: dict[str, Any]) -> dict[str, Any]:
    """benchmarks/gpu_check_quant.py's ``run_stage()``, where that file exists."""
    try:
        import gpu_check_quant  # type: ignore[import-not-found]
    except ModuleNotFoundError as exc:
        if exc.name != "gpu_check_quant":
            raise
        return {"status": "not available", "note": "benchmarks/gpu_check_quant.py is not there"}
    return gpu_check_quant.run_stage()


Stage = Callable[[dict[str, Any]], dict[str, Any]]
STAGES: list[tuple[str, Stage]] = [
    ("machine", stage_machine),
    ("exactness", stage_exactness),
    ("direct", stage_direct),
    ("throughput", stage_throughput),
    ("probe", stage_probe),
    ("quant", stage_quant),
]
# A stage returns its result (a dict). A "status" key in it ("inexact", "skipped", "not available")
# overrides "ok", and a "note" key is shown in the stage table; an exception makes it "crashed".


def write_results(result: dict[str, Any], out: Path, stem: str) -> None:
    """The JSON and Markdown so far, each replaced atomically (a kill never leaves half a file)."""
    out.mkdir(parents=True, exist_ok=True)
    for suffix, text in ((".json", json.dumps(result, indent=1, default=str) + "\n"), (".md", report_md(result))):
        tmp = out / f".{stem}{suffix}.tmp"
        tmp.write_text(text)
        os.replace(tmp, out / f"{stem}{suffix}")


def run_stages(stages: list[tuple[str, Stage]], ctx: dict[str, Any], result: dict[str, Any], out: Path, stem: str):
    """Run each stage, record its result or exception as it finishes, and write the files after each."""
    result.setdefault("stages", {})
    for name, fn in stages:
        print(f"gpu_check: stage {name}", flush=True)
        t0 = time.perf_counter()
        record: dict[str, Any]
        try:
            value = fn(ctx)
            status = value.get("status", "ok") if isinstance(value, dict) else "ok"
            record = {"status": status, "result": value}
            if isinstance(value, dict) and value.get("note"):
                record["note"] = str(value["note"])
        except Exception as exc:
            record = {"status": "crashed", "error": f"{type(exc).__name__}: {exc}", "traceback": traceback.format_exc()}
            record["note"] = record["error"][:200]
            print(f"gpu_check: stage {name} crashed:\n{record['traceback']}", file=sys.stderr, flush=True)
        record["seconds"] = time.perf_counter() - t0
        result["stages"][name] = record
        print(f"gpu_check: stage {name}: {record['status']} ({record['seconds']:.1f} s)", flush=True)
        write_results(result, out, stem)
    return result


def exit_status(stages: dict[str, dict[str, Any]], allow_skip: bool) -> int:
    """1 inexact, 5 a stage crashed, 4 a check skipped (unless allowed), else 0 (see the docstring)."""
    found = {record["status"] for record in stages.values()}
    if "inexact" in found:
        return 1
    if "crashed" in found:
        return 5
    if "skipped" in found and not allow_skip:
        return 4
    return 0


def main(argv: list[str] | None = None, stages: list[tuple[str, Stage]] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="small sets, 1 repeat (a smoke run)")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--workdir", default=tempfile.gettempdir())
    ap.add_argument("--no-install", action="store_true", help="do not build featstore._cuda when it is missing")
    ap.add_argument("--allow-skip", action="store_true", help="exit 0 even when a check was skipped")
    ap.add_argument("--out", default=str(RESULTS_DIR), help="folder for gpu_check.{json,md}")
    args = ap.parse_args(argv)
    ensure_gpu_and_module(args.no_install)

    import featstore.batches.cuda

    started = time.perf_counter()
    uva_ok, uva_why = featstore.batches.cuda.uva_support(torch.device("cuda"))
    if not uva_ok:
        print(f"gpu_check: WARNING: the kernel and UVA checks will be SKIPPED: {uva_why}", file=sys.stderr, flush=True)
    result: dict[str, Any] = {
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "command": " ".join(
            [Path(sys.executable).name, "benchmarks/gpu_check.py", *(argv if argv is not None else sys.argv[1:])]
        ),
        "uva_why": uva_why,
        "stages": {},
    }
    stem = "gpu_check-quick" if args.quick else "gpu_check"
    out = Path(args.out)
    work = Path(tempfile.mkdtemp(prefix="featstore-gpu-check-", dir=args.workdir))
    ctx = {"work": work, "quick": args.quick, "repeats": 1 if args.quick else args.repeats, "uva_ok": uva_ok}
    try:
        run_stages(STAGES if stages is None else stages, ctx, result, out, stem)
    finally:
        ctx.clear()
        shutil.rmtree(work, ignore_errors=True)
    result["machine"] = (result["stages"].get("machine") or {}).get("result")
    result["seconds"] = time.perf_counter() - started
    result["exit_status"] = exit_status(result["stages"], args.allow_skip)
    write_results(result, out, stem)
    print(report_md(result))
    print(f"gpu_check: wrote {out / stem}.json and .md; exit status {result['exit_status']}", flush=True)
    return result["exit_status"]


if __name__ == "__main__":
    sys.exit(main())
