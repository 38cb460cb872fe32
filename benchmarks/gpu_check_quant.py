"""The quant stage of benchmarks/gpu_check.py: the int8 / float8 e4m3 dequantising CUDA gather.

``run_stage()`` (what gpu_check.py calls, no arguments) returns one dict:

1. exactness: the kernel (csrc/cuda_dequant.cu) against the CPU core bit for bit, for each scheme x
   output dtype: every one of the 256 codes (NaN, subnormal and signed-zero codes included) times
   scales of every size, from device memory, for each load width (groups of 256, 8, 4 and 1 codes;
   aligned and unaligned scales); ``featstore.batches.cuda.gather`` of a pooled (768,) set and a
   patch-grid (50, 33) set (per-token scales, an odd width) on random rows with duplicates; and the
   loader's "device" and "uva" paths over a quantised set against its CPU batches.
2. throughput: GB/s of the kernel path on one epoch of random batches of 8192 rows x 768: int8 codes
   dequantised to float16, against the raw float16 kernel gather of the same rows (int8 reads half
   the bytes), and the device cache (codes + scales held, dequantised per batch) against
   index_select of resident float16 rows. GB/s counts the float16 bytes delivered.

Status: "inexact" if any check differs, "skipped" without a CUDA GPU or a usable featstore._cuda,
else "ok"; "note" says the figures in one line. Run alone: ``python benchmarks/gpu_check_quant.py``
(prints the JSON).
"""

from __future__ import annotations

import json
import statistics
import sys
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch

SCHEMES = ("int8", "float8_e4m3")
OUT_DTYPES = {"float16": torch.float16, "bfloat16": torch.bfloat16, "float32": torch.float32}
CODE_LAYOUTS = ((256, 0), (8, 0), (4, 1), (1, 2))  # (codes sharing a scale, byte offset of the scales)
SHAPES = {"pooled (768,)": (768,), "patch grid (50, 33)": (50, 33)}


def same_bits(a: torch.Tensor, b: torch.Tensor) -> bool:
    a, b = a.detach().cpu().contiguous(), b.detach().cpu().contiguous()
    return a.shape == b.shape and a.dtype == b.dtype and torch.equal(a.view(torch.uint8), b.view(torch.uint8))


def every_code_exact(scheme: str, dtype: torch.dtype, group: int, offset: int) -> bool:
    """All 256 codes times scales of every size (subnormal, zero, negative, huge), rows in random
    order with duplicates: the kernel on device memory (scales ``offset`` bytes past an aligned
    address) against featstore._core's dequant_gather, bit for bit."""
    import featstore.batches.cuda as fcuda
    from featstore import _backend

    row_elems, name = 256, str(dtype).removeprefix("torch.")
    codes = torch.arange(256, dtype=torch.int64).to(torch.uint8).repeat(8)
    n_rows = len(codes) // row_elems
    values = torch.tensor([1.0, 2.0**-140, 3.7e-3, 1e30, 0.0, -0.5, 6e-8, 1 / 3], dtype=torch.float32)
    count = n_rows * (row_elems // group)
    scales = values.repeat(count // len(values) + 1)[:count]
    scale_bytes = torch.zeros(count * 4 + offset, dtype=torch.uint8)
    scale_bytes[offset:] = scales.view(torch.uint8)
    rows = np.array([3, 0, 7, 7, 1, 5, 2, 6, 4], dtype=np.int64)
    want = torch.empty((len(rows), row_elems), dtype=dtype)
    _backend.dequant_gather(
        codes.numpy(), scale_bytes[offset:].numpy(), row_elems, group, rows, want.view(torch.uint8).numpy(), scheme,
        name, 1,
    )  # fmt: skip
    d_codes, d_scales = codes.cuda(), scale_bytes.cuda()
    plan = torch.from_numpy(fcuda.sorted_plan(rows)).cuda()
    got = torch.empty((len(rows), row_elems), dtype=dtype, device="cuda")
    fcuda.REGISTRY.mod.dequant_gather(
        d_codes.data_ptr(), n_rows, row_elems, group, d_scales.data_ptr() + offset, plan[0].data_ptr(),
        plan[1].data_ptr(), len(rows), got.data_ptr(), scheme, name, 0, got.device.index,
        torch.cuda.current_stream().cuda_stream,
    )  # fmt: skip
    torch.cuda.synchronize()
    return same_bits(got, want)


def quant_set(store, key: str, n: int, row_shape: tuple[int, ...], scheme: str | None, seed: int):
    """Random normal float16 rows (vectors of 5 decades of sizes), quantised with ``scheme`` (None: raw)."""
    gen = torch.Generator().manual_seed(seed)
    chunk = max(1, (16 << 20) // (4 * int(np.prod(row_shape))))
    sizes = torch.logspace(-3, 2, int(np.prod(row_shape[:-1], dtype=np.int64))).view(*row_shape[:-1], 1)
    with store.create_feature_set(key, n, row_shape, "float16", {}, np.arange(n) % 10, quant=scheme) as w:
        for start in range(0, n, chunk):
            rows = torch.randn((min(chunk, n - start), *row_shape), generator=gen) * sizes
            w.write(start, rows.half())
    return store.refresh()[key]


def exactness(store) -> list[dict[str, Any]]:
    import featstore.batches.cuda as fcuda

    checks: list[dict[str, Any]] = []
    for scheme in SCHEMES:
        for dname, dtype in OUT_DTYPES.items():
            for group, offset in CODE_LAYOUTS:
                ok = every_code_exact(scheme, dtype, group, offset)
                checks.append({"check": f"every code, groups of {group}, scales +{offset}", "scheme": scheme,
                               "dtype": dname, "exact": ok})  # fmt: skip
        for sname, shape in SHAPES.items():
            fs = quant_set(store, f"exact/{scheme}-{'x'.join(map(str, shape))}", 5000, shape, scheme, seed=1)
            idx = np.random.default_rng(0).integers(0, len(fs), 4096).astype(np.int64)
            idx[:3] = [len(fs) - 1, 0, len(fs) - 1]
            for dname, dtype in OUT_DTYPES.items():
                ok = same_bits(fcuda.gather(fs, idx, dtype=dtype), fs.gather(idx, dtype=dtype))
                checks.append({"check": f"cuda.gather {sname}", "scheme": scheme, "dtype": dname, "exact": ok})
            for cache in ("device", "uva"):
                loader = fs.batches(1000, shuffle=True, seed=2, device="cuda", cache=cache, prefetch=2)
                got = [(x, rows) for x, _, rows in loader] if loader.info["path"] == cache else []
                cpu = [(x, rows) for x, _, rows in fs.batches(1000, shuffle=True, seed=2)]
                ok = len(got) == len(cpu) and all(
                    same_bits(x, cx) and torch.equal(r, cr) for (x, r), (cx, cr) in zip(got, cpu, strict=True)
                )
                checks.append({"check": f"batches cache={cache!r} {sname}", "scheme": scheme,
                               "dtype": "float16", "exact": ok})  # fmt: skip
            del fs
    return checks


def gbs_of(fn, nbytes: int, repeats: int) -> dict[str, Any]:
    from gpu_check import timed  # type: ignore[import-not-found]  # benchmarks/ is on sys.path

    seconds = timed(fn, repeats)
    gbs = [nbytes / s / 1e9 for s in seconds]
    return {"median_gbs": statistics.median(gbs), "min_gbs": min(gbs), "max_gbs": max(gbs), "seconds": seconds}


def throughput(store, n: int = 131072, bs: int = 8192, repeats: int = 5) -> dict[str, Any]:
    import featstore.batches.cuda as fcuda
    from featstore.batches import device_assemblers as dev_asm

    dev = torch.device("cuda", torch.cuda.current_device())
    raw = quant_set(store, "speed/float16", n, (768,), None, seed=3)
    q = quant_set(store, "speed/int8", n, (768,), "int8", seed=3)
    epochs = {rep: np.random.default_rng(rep + 1).permutation(n).astype(np.int64) for rep in range(-1, repeats)}
    plans = {
        rep: [torch.from_numpy(fcuda.sorted_plan(o[i : i + bs])).to(dev) for i in range(0, n - bs + 1, bs)]
        for rep, o in epochs.items()
    }
    ident = {
        rep: [torch.from_numpy(np.stack([o[i : i + bs], np.arange(bs, dtype=np.int64)])).to(dev)
              for i in range(0, n - bs + 1, bs)]
        for rep, o in epochs.items()
    }  # fmt: skip
    out = torch.empty((bs, 768), dtype=torch.float16, device=dev)
    nbytes = (n // bs) * bs * 768 * 2  # float16 bytes delivered an epoch
    stream = torch.cuda.current_stream(dev)
    src = {fs.key: fcuda.REGISTRY.device_pointer(fs, dev.index) for fs in (raw, q)}
    resident = raw.to_torch().to(dev)
    held = dev_asm.HeldCodes(q, dev)
    kernel = fcuda.uva_support(dev)[0]

    def uva(fs):
        def run(rep):
            for plan in plans[rep]:
                fcuda.launch_gather(fs, src[fs.key], plan, out, stream)

        return run

    def cached_quant(rep):
        for plan in ident[rep]:
            dev_asm.dequantise_held(q, held, plan, torch.float16, stream, kernel)

    def cached_raw(rep):
        for plan in ident[rep]:
            torch.index_select(resident, 0, plan[0])

    methods = {
        "uva kernel: float16 raw rows": uva(raw),
        "uva kernel: int8 -> float16": uva(q),
        "device cache: float16 index_select": cached_raw,
        "device cache: int8 codes -> float16": cached_quant,
    }
    results = {name: gbs_of(fn, nbytes, repeats) for name, fn in methods.items()}
    med = {k: v["median_gbs"] for k, v in results.items()}
    return {
        "rows": n,
        "batch": bs,
        "bytes_per_epoch": nbytes,
        "host_bytes_read": {"float16": raw.nbytes, "int8": q.nbytes + 4 * n},
        "held_on_device": {"float16": resident.nbytes, "int8": held.nbytes},
        "methods": results,
        "uva_int8_over_float16": med["uva kernel: int8 -> float16"] / med["uva kernel: float16 raw rows"],
        "device_int8_over_float16": med["device cache: int8 codes -> float16"]
        / med["device cache: float16 index_select"],
    }


def summarise(checks: list[dict[str, Any]], speed: dict[str, Any] | None) -> dict[str, Any]:
    """The stage's dict: the checks, the failures, status and a one-line note."""
    failures = [c for c in checks if not c["exact"]]
    note = f"{len(checks) - len(failures)}/{len(checks)} exact"
    if speed is not None:
        note += (
            f"; uva int8->f16 {speed['uva_int8_over_float16']:.2f}x the f16 kernel, "
            f"device cache int8 {speed['device_int8_over_float16']:.2f}x f16 index_select"
        )
    return {
        "status": "inexact" if failures else "ok",
        "note": note,
        "checks": len(checks),
        "exact": len(checks) - len(failures),
        "failures": failures,
        "table": checks,
        "throughput": speed,
    }


def run_stage() -> dict[str, Any]:
    """The quant stage (see the module docstring); "skipped" without a CUDA GPU or featstore._cuda."""
    import featstore.batches.cuda as fcuda

    if not torch.cuda.is_available():
        return {"status": "skipped", "note": "no CUDA GPU (torch.cuda.is_available() is False)"}
    ok, why = fcuda.uva_support(torch.device("cuda"))
    if not ok:
        return {"status": "skipped", "note": f"the CUDA kernel cannot run: {why}"}
    from featstore import FeatureStore

    with tempfile.TemporaryDirectory(prefix="gpu_check_quant-") as tmp:
        store = FeatureStore.create(Path(tmp) / "store")
        checks = exactness(store)
        speed = throughput(store)
    return summarise(checks, speed)


if __name__ == "__main__":
    result = run_stage()
    print(json.dumps(result, indent=1, default=str))
    sys.exit(0 if result["status"] == "ok" else 1)
