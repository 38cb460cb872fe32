"""How fast the synthetic spatial dataset renders: images per second, median of 3 runs.

Two numbers, both for the README's command (2000 images, 224 px, seed 0):

- ``generate()``: the Python API in a warm process (render, write PNGs, save the HF dataset);
- the command line ``featstore dataset synth ...`` as a user runs it (adds interpreter start-up and
  the torch/datasets imports).

It also checks that every run wrote the same bytes, and records the machine's load average, since
other work on the same cores lowers the figures. Results go to benchmarks/results/synth.json and .md.

    python benchmarks/bench_synth.py [--n 2000] [--size 224] [--runs 3] [--workers W]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results"


def _tree_hash(folder: Path) -> str:
    h = hashlib.sha256()
    for p in sorted(folder.rglob("*")):
        if p.is_file():
            h.update(str(p.relative_to(folder)).encode() + b"\0" + hashlib.sha256(p.read_bytes()).digest())
    return h.hexdigest()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=2000)
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--workers", type=int, default=None, help="default: one per CPU, as the command line does")
    args = ap.parse_args(argv)

    import PIL

    import datasets  # imported before timing: the API is measured in a warm process
    from featstore.spatial.synth import default_workers, generate

    workers = args.workers or default_workers()
    command = f"featstore dataset synth --out datasets/spatial_hf --n {args.n} --seed {args.seed} --size {args.size}"
    api_times, cli_times, hashes = [], [], []
    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory() as tmp:
        for run in range(args.runs):
            out = Path(tmp) / f"api{run}"
            t0 = time.perf_counter()
            generate(out, n=args.n, seed=args.seed, size=args.size, workers=workers, progress=False)
            api_times.append(time.perf_counter() - t0)
            hashes.append(_tree_hash(out))
            shutil.rmtree(out)
            print(f"generate() run {run + 1}: {args.n / api_times[-1]:.0f} images/s", flush=True)
        for run in range(args.runs):
            out = Path(tmp) / f"cli{run}"
            cli = [
                sys.executable,
                "-m",
                "featstore",
                "dataset",
                "synth",
                "--out",
                str(out),
                "--n",
                str(args.n),
                "--seed",
                str(args.seed),
                "--size",
                str(args.size),
                "--workers",
                str(workers),
                "--no-progress",
            ]
            t0 = time.perf_counter()
            subprocess.run(cli, check=True, cwd=ROOT, stdout=subprocess.DEVNULL)
            cli_times.append(time.perf_counter() - t0)
            hashes.append(_tree_hash(out))
            shutil.rmtree(out)
            print(f"command line run {run + 1}: {args.n / cli_times[-1]:.0f} images/s", flush=True)
    load_after = os.getloadavg()

    api_rate = args.n / statistics.median(api_times)
    cli_rate = args.n / statistics.median(cli_times)
    result = {
        "command": command,
        "benchmark": (
            "python benchmarks/bench_synth.py " + " ".join(argv if argv is not None else sys.argv[1:])
        ).strip(),
        "n": args.n,
        "size": args.size,
        "seed": args.seed,
        "workers": workers,
        "runs": args.runs,
        "generate_seconds": api_times,
        "generate_images_per_s_median": round(api_rate, 1),
        "cli_seconds": cli_times,
        "cli_images_per_s_median": round(cli_rate, 1),
        "identical_bytes_every_run": len(set(hashes)) == 1,
        "machine": {
            "cpus": os.cpu_count(),
            "processor": platform.processor() or platform.machine(),
            "python": platform.python_version(),
            "pillow": PIL.__version__,
            "datasets": datasets.__version__,
            "loadavg_1min_before": round(load_before[0], 2),
            "loadavg_1min_after": round(load_after[0], 2),
        },
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "synth.json").write_text(json.dumps(result, indent=1) + "\n")
    (RESULTS / "synth.md").write_text(
        "# Synthetic dataset generation speed\n\n"
        f"`{command}` ({args.n} images of {args.size} px, {workers} worker process(es), "
        f"{os.cpu_count()} CPUs, Python {platform.python_version()}, Pillow {PIL.__version__}).\n\n"
        "| what | median of {r} runs | runs (s) |\n| --- | --- | --- |\n".format(r=args.runs)
        + f"| `generate()` in a warm process | **{api_rate:.0f} images/s** | {', '.join(f'{t:.2f}' for t in api_times)} |\n"
        + f"| the command line, start-up included | **{cli_rate:.0f} images/s** | {', '.join(f'{t:.2f}' for t in cli_times)} |\n\n"
        + f"Every run wrote identical bytes: {result['identical_bytes_every_run']}. "
        + f"1-minute load average {load_before[0]:.2f} before, {load_after[0]:.2f} after "
        + "(other work on the same cores lowers these figures).\n\n"
        + f"Reproduce: `{result['benchmark'].strip()}`\n"
    )
    print(
        f"{command}: generate() {api_rate:.0f} images/s, command line {cli_rate:.0f} images/s "
        f"(median of {args.runs}); identical bytes: {result['identical_bytes_every_run']}; "
        f"written to {RESULTS / 'synth.json'} and synth.md"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
