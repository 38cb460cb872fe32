"""What registering a feature set with CUDA costs: RssAnon before and after, the time to register,
and the kernel's rows against the CPU gather.

    python benchmarks/gpu_register_probe.py [--mib 1024] [--out DIR] [--workdir /tmp]

Two registrations of the same set, each measured alone:

- "featstore": ``featstore.batches.cuda.REGISTRY`` (a MAP_SHARED, PROT_READ mapping of the file,
  registered read-only; or a private copy where read-only registration is unsupported);
- "private view, read-only" (the registration featstore made before issue 16): the set's own
  MAP_PRIVATE view registered with ``cudaHostRegisterReadOnly``. On Linux >= 6.2 the driver's
  long-term pin unshares every page of it into new anonymous memory: RssAnon grows by the set.

Writes ``register_probe.json`` to ``--out`` after every measurement. Exit status: 0 done (the
kernel's rows exact), 1 not exact, 2 no CUDA GPU, 3 featstore._cuda missing or unusable.
"""

from __future__ import annotations

import argparse
import json
import platform
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch


def status_kib(field: str) -> int:
    """A field of /proc/self/status in KiB (RssAnon, RssFile, VmLck...)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    return -1


def memory() -> dict[str, int]:
    return {f: status_kib(f) for f in ("RssAnon", "RssFile", "VmRSS")}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--mib", type=int, default=1024, help="size of the set")
    ap.add_argument("--out", default=".", help="folder for register_probe.json")
    ap.add_argument("--workdir", default=tempfile.gettempdir())
    args = ap.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    result: dict[str, Any] = {"kernel": platform.release(), "torch": torch.__version__, "cuda": torch.version.cuda}

    def save() -> None:
        (out / "register_probe.json").write_text(json.dumps(result, indent=1) + "\n")

    if not torch.cuda.is_available():
        result["error"] = "no CUDA GPU (torch.cuda.is_available() is False)"
        save()
        print(f"gpu_register_probe: {result['error']}", file=sys.stderr)
        return 2
    import featstore.batches.cuda as fcuda
    from featstore import FeatureStore

    mod = fcuda.module()
    ok, why = fcuda.uva_support(torch.device("cuda"))
    if mod is None or not ok:
        result["error"] = f"the kernel path cannot run: {why}"
        save()
        print(f"gpu_register_probe: {result['error']}", file=sys.stderr)
        return 3
    dev = torch.cuda.current_device()
    result.update(
        gpu=torch.cuda.get_device_name(dev),
        read_only_register_supported=bool(mod.read_only_register_supported(dev)),
        register_mode=fcuda.register_mode(dev),
    )
    torch.zeros(1, device="cuda")  # the CUDA context first: its own allocations are not the set's
    work = Path(tempfile.mkdtemp(prefix="featstore-register-probe-", dir=args.workdir))
    try:
        return measure(FeatureStore.create(work), args.mib, dev, mod, fcuda, result, save)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def measure(store, mib: int, dev: int, mod, fcuda, result: dict[str, Any], save) -> int:
    """Both registrations of one set of ``mib`` MiB (see the module docstring); 0 when exact."""
    n = mib * 2**20 // 1536
    with store.create_feature_set("probe", n, (768,), torch.float16) as w:
        for start in range(0, n, 65_536):
            w.write(start, torch.randn(min(65_536, n - start), 768).half())
    fs = store["probe"]
    result["set_bytes"] = fs.nbytes
    fs.gather(np.arange(n))  # the file in the page cache, as after a CPU epoch
    idx = np.random.default_rng(0).integers(0, n, 8192)
    want = fs.gather(idx)

    before = memory()
    t0 = time.perf_counter()
    fcuda.REGISTRY.device_pointer(fs, dev)
    register_s = time.perf_counter() - t0
    after = memory()
    got = fcuda.gather(fs, idx)
    exact = bool(torch.equal(got.cpu().view(torch.uint8), want.view(torch.uint8)))
    t0 = time.perf_counter()
    fcuda.unregister(fs)
    result["featstore"] = {
        "mode": result["register_mode"],
        "register_s": register_s,
        "unregister_s": time.perf_counter() - t0,
        "rss_anon_grew_mib": (after["RssAnon"] - before["RssAnon"]) / 1024,
        "rss_file_grew_mib": (after["RssFile"] - before["RssFile"]) / 1024,
        "before_kib": before,
        "after_kib": after,
        "exact_vs_cpu_gather": exact,
    }
    save()
    print(f"gpu_register_probe: featstore: {result['featstore']}", flush=True)

    # The registration of before issue 16, measured for comparison (read-only flag, private view).
    if result["read_only_register_supported"]:
        address = int(np.frombuffer(fs.data, dtype=np.uint8).ctypes.data)
        before = memory()
        t0 = time.perf_counter()
        try:
            mod.host_register(address, fs.nbytes, True, dev)
            record: dict[str, Any] = {"register_s": time.perf_counter() - t0}
            after = memory()
            mod.host_unregister(address)
            record.update(
                rss_anon_grew_mib=(after["RssAnon"] - before["RssAnon"]) / 1024,
                rss_file_grew_mib=(after["RssFile"] - before["RssFile"]) / 1024,
            )
        except RuntimeError as exc:
            record = {"error": str(exc)}
        result["private view, read-only"] = record
        save()
        print(f"gpu_register_probe: private view, read-only: {record}", flush=True)
    return 0 if exact else 1


if __name__ == "__main__":
    sys.exit(main())
