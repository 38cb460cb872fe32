"""Micro-benchmark: featstore gather vs torch.index_select vs np.take (median output GB/s).

    .venv/bin/python benchmarks/micro_gather.py [--rounds 8] [--calls 12] [--gap-ms 0] [--quick]

Sources are files under $TMPDIR (random bytes, ~2 GB in all, created once), mapped by featstore's
MappedFile and pre-faulted: the steady state of an epoch (page cache warm, pages mapped).
"idxsel mmap" is torch.index_select on torch.frombuffer of that same mapping; "idxsel RAM" on an
in-memory clone. Every method writes into the same preallocated output and gets fresh random
indices on every call (no cache reuse). Methods run in short alternating blocks (the machine may be
shared; drifts hit all of them alike) with a pause between blocks so no thread pool is still
spinning from the previous method. --gap-ms G also sleeps G ms before every call, so both thread
pools are asleep when the call starts (a training loop that computes between batches).
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time

import numpy as np
import torch

from featstore import _core

CASES = [  # (n_rows, row_bytes, batch)
    (262144, 1536, 1024),  # 768 x float16
    (262144, 1536, 8192),
    (262144, 3072, 1024),  # 1536 x float16 / 768 x float32
    (262144, 3072, 8192),
    (4096, 197376, 64),  # 257 x 384 float16 token maps
    (4096, 197376, 512),
]


def data_file(n_rows: int, row_bytes: int) -> str:
    path = os.path.join(tempfile.gettempdir(), f"featstore_bench_{n_rows}x{row_bytes}.bin")
    size = n_rows * row_bytes
    if not os.path.exists(path) or os.path.getsize(path) != size:
        rng = np.random.default_rng(0)
        with open(path + ".tmp", "wb") as f:
            for off in range(0, size, 1 << 26):
                f.write(rng.integers(0, 256, min(1 << 26, size - off), dtype=np.uint8).tobytes())
        os.replace(path + ".tmp", path)
    return path


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=8)
    ap.add_argument("--calls", type=int, default=12, help="timed calls per method per round")
    ap.add_argument("--gap-ms", type=float, default=0.0)
    ap.add_argument("--quick", action="store_true", help="only the first two cases")
    args = ap.parse_args()
    print(
        f"featstore threads={_core.get_num_threads()} torch threads={torch.get_num_threads()} "
        f"cpus={os.cpu_count()} gap={args.gap_ms} ms; median GB/s of output"
    )
    names = ["featstore", "fs 1thr", "idxsel mmap", "idxsel RAM", "np.take"]
    print(f"{'case':>22} " + " ".join(f"{n:>11}" for n in names) + "   featstore / idxsel mmap")
    rng = np.random.default_rng(1)
    for n_rows, row_bytes, batch in CASES[:2] if args.quick else CASES:
        mf = _core.MappedFile(data_file(n_rows, row_bytes))
        flat = np.frombuffer(mf, dtype=np.uint8)
        flat[::4096].sum()  # pre-fault every page of the mapping
        width = row_bytes // 2
        mapped = torch.frombuffer(mf, dtype=torch.float16).view(n_rows, width)  # zero-copy
        in_ram = mapped.clone()
        as_np = flat.reshape(n_rows, row_bytes)
        out = torch.empty(batch, width, dtype=torch.float16)
        out_np = out.numpy()
        out_u8 = out_np.view(np.uint8).reshape(batch, row_bytes)
        methods = {
            "featstore": lambda i, it: _core.gather(mf, row_bytes, i, out_np),
            "fs 1thr": lambda i, it: _core.gather(mf, row_bytes, i, out_np, 1),
            "idxsel mmap": lambda i, it: torch.index_select(mapped, 0, it, out=out),
            "idxsel RAM": lambda i, it: torch.index_select(in_ram, 0, it, out=out),
            "np.take": lambda i, it: np.take(as_np, i, axis=0, out=out_u8, mode="clip"),
        }
        calls = args.calls if batch * row_bytes < 50e6 else max(3, args.calls // 4)
        times: dict[str, list[float]] = {k: [] for k in methods}
        for r in range(args.rounds):
            for name in names if r % 2 == 0 else names[::-1]:
                fn = methods[name]
                idx = [rng.integers(0, n_rows, batch, dtype=np.int64) for _ in range(calls + 1)]
                time.sleep(0.05)  # let the previous method's pool stop spinning (libgomp spins for ms)
                fn(idx[0], torch.from_numpy(idx[0]))  # warm-up
                for i in idx[1:]:
                    it = torch.from_numpy(i)
                    if args.gap_ms:
                        time.sleep(args.gap_ms / 1e3)
                    t = time.perf_counter()
                    fn(i, it)
                    times[name].append(time.perf_counter() - t)
        gbs = {k: batch * row_bytes / statistics.median(v) / 1e9 for k, v in times.items()}
        case = f"{n_rows}x{row_bytes} b={batch}"
        print(
            f"{case:>22} "
            + " ".join(f"{gbs[n]:11.2f}" for n in names)
            + f"   x{gbs['featstore'] / gbs['idxsel mmap']:.2f}",
            flush=True,
        )
        del mapped, in_ram, as_np, flat, out_u8, out_np, out


if __name__ == "__main__":
    main()
