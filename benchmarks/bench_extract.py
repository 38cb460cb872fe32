"""Extraction benchmark: what one forward pass for K layers costs, and what featstore adds around it.

    .venv/bin/python benchmarks/bench_extract.py [--quick] [--images 160] [--batch-size 16] [--repeats 5]
                                                 [--threads 1] [--workers 1] [--workdir DIR] [--keep]

Model: a random-init DINOv2 of ViT-S/14 size (hidden 384, 12 blocks, 6 heads, MLP 1536, 224 px,
257 tokens), saved with save_pretrained and loaded through the real path (offline). Data: the
synthetic spatial dataset (``featstore dataset synth``), one 224 px PNG per row.

Three things run interleaved, in a rotated order, ``--repeats`` times (medians reported):

  bare loop    the same model over the same batches, already decoded and preprocessed in memory:
               ``model(pixel_values=x, output_hidden_states=True)`` per batch, nothing else
  extract 1    ``featstore.extract(..., layers="last", pooling="cls")`` into a fresh store
  extract 3    ``featstore.extract(..., layers="4,8,last", pooling="cls")`` into a fresh store

Extraction time is ``ExtractResult.seconds``: from the start of the image pipeline (DataLoader workers
decoding PNGs and preprocessing) to the finished, committed feature sets; the model is loaded before
the clock starts, as the bare loop's is, and the ``.pt`` exports are left out (``export_pt=False``).

Targets (issue 4): extract 3 <= 1.1 x extract 1; extract 1 <= 1.05 x bare loop. On a machine with
few cores the decoding workers and the model share them: ``--threads`` (torch threads, the same for
the bare loop and the extraction) plus ``--workers`` should not exceed the cores.

Results go to benchmarks/results/extract.{json,md} (``--quick``: extract-quick.*, small, 1 repeat).
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch

HERE = Path(__file__).resolve().parent
VIT_S = dict(
    hidden_size=384, num_hidden_layers=12, num_attention_heads=6, intermediate_size=1536, image_size=224, patch_size=14
)


def make_model(folder: Path) -> Path:
    from transformers import BitImageProcessor, Dinov2Config, Dinov2Model
    from transformers.utils import logging

    logging.set_verbosity_error()
    logging.disable_progress_bar()
    torch.manual_seed(0)
    Dinov2Model(Dinov2Config(**VIT_S)).save_pretrained(folder)
    BitImageProcessor(
        size={"shortest_edge": 256},
        crop_size={"height": 224, "width": 224},
        do_center_crop=True,
        image_mean=[0.485, 0.456, 0.406],
        image_std=[0.229, 0.224, 0.225],
    ).save_pretrained(folder)
    return folder


def bare_loop(model_dir: Path, batches: list[torch.Tensor]) -> float:
    """Seconds for the model alone over the preprocessed batches (loaded before timing)."""
    from featstore.encoders import build_encoder

    enc = build_encoder("dinov2", model_dir)
    model = enc.model
    start = time.perf_counter()
    with torch.inference_mode():
        for x in batches:
            model(pixel_values=x, output_hidden_states=True)
    return time.perf_counter() - start


def extract_once(dataset: Path, model_dir: Path, out: Path, layers: str, args) -> float:
    import featstore

    shutil.rmtree(out, ignore_errors=True)
    result = featstore.extract(
        str(dataset),
        "dinov2",
        str(model_dir),
        out,
        layers=layers,
        pooling="cls",
        batch_size=args.batch_size,
        num_workers=args.workers,
        progress=False,
        export_pt=False,
    )
    assert result.images_encoded == args.images, result
    return result.seconds


def preprocessed_batches(dataset: Path, model_dir: Path, batch_size: int) -> list[torch.Tensor]:
    from PIL import Image

    from featstore.encoders import build_encoder
    from featstore.spatial import image_paths, load_from_disk

    enc = build_encoder("dinov2", model_dir)
    paths = image_paths(load_from_disk(dataset))
    out = []
    for i in range(0, len(paths), batch_size):
        images = [Image.open(p).convert("RGB") for p in paths[i : i + batch_size]]
        out.append(enc.preprocess(images)["pixel_values"])
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="16 images, 1 repeat; results to extract-quick.*")
    p.add_argument("--images", type=int, default=160)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--threads", type=int, default=1, help="torch threads for the model (bare loop and extraction)")
    p.add_argument("--workers", type=int, default=1, help="DataLoader workers decoding images")
    p.add_argument("--workdir", default=None)
    p.add_argument("--keep", action="store_true")
    args = p.parse_args(argv)
    if args.quick:
        args.images, args.repeats = 16, 1
    torch.set_num_threads(args.threads)

    from featstore.spatial.synth import generate

    work = Path(args.workdir or tempfile.mkdtemp(prefix="bench_extract_"))
    work.mkdir(parents=True, exist_ok=True)
    try:
        model_dir = make_model(work / "model")
        dataset = work / "dataset"
        generate(dataset, n=args.images, seed=0, size=224, overwrite=True, progress=False)
        batches = preprocessed_batches(dataset, model_dir, args.batch_size)
        runs = {
            "bare loop": lambda: bare_loop(model_dir, batches),
            "extract 1 layer": lambda: extract_once(dataset, model_dir, work / "store1", "last", args),
            "extract 3 layers": lambda: extract_once(dataset, model_dir, work / "store3", "4,8,last", args),
        }
        names = list(runs)
        times: dict[str, list[float]] = {n: [] for n in names}
        runs["bare loop"]()  # warm-up: page cache, allocator, kernels
        for rep in range(args.repeats):
            for name in names[rep % 3 :] + names[: rep % 3]:
                times[name].append(runs[name]())
                print(f"repeat {rep}: {name}: {times[name][-1]:.2f} s", file=sys.stderr)
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)

    med = {n: statistics.median(v) for n, v in times.items()}
    ratios = {
        "3 layers / 1 layer": med["extract 3 layers"] / med["extract 1 layer"],
        "extract 1 layer / bare loop": med["extract 1 layer"] / med["bare loop"],
        "extract 3 layers / bare loop": med["extract 3 layers"] / med["bare loop"],
    }
    targets = {"3 layers / 1 layer": 1.10, "extract 1 layer / bare loop": 1.05, "extract 3 layers / bare loop": None}
    result = {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "command": " ".join(
            [os.path.relpath(sys.argv[0], HERE.parent) if sys.argv[0] else "bench_extract.py", *(argv or sys.argv[1:])]
        ),
        "machine": {
            "platform": platform.platform(),
            "cpus": os.cpu_count(),
            "torch": torch.__version__,
            "python": platform.python_version(),
        },
        "settings": {
            "model": "random-init DINOv2 ViT-S/14 (384 wide, 12 blocks), 224 px",
            "images": args.images,
            "batch_size": args.batch_size,
            "repeats": args.repeats,
            "torch_threads": args.threads,
            "workers": args.workers,
            "store_dtype": "float16",
            "pooling": "cls",
        },
        "seconds": times,
        "median_seconds": med,
        "images_per_second": {n: args.images / t for n, t in med.items()},
        "ratios": ratios,
        "targets": targets,
    }
    stem = "extract-quick" if args.quick else "extract"
    out_dir = HERE / "results"
    out_dir.mkdir(exist_ok=True)
    (out_dir / f"{stem}.json").write_text(json.dumps(result, indent=1) + "\n")
    lines = [
        f"# Extraction benchmark ({result['date']})",
        "",
        f"`{result['command']}` on {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, torch {torch.__version__}; "
        f"{result['settings']['model']}; {args.images} images, batch {args.batch_size}, torch threads {args.threads}, "
        f"{args.workers} decoding worker(s), medians of {args.repeats}.",
        "",
        "| run | seconds (median) | min..max | images/s |",
        "|---|---|---|---|",
    ]
    for n in names:
        lines.append(f"| {n} | {med[n]:.2f} | {min(times[n]):.2f}..{max(times[n]):.2f} | {args.images / med[n]:.1f} |")
    lines += ["", "| ratio | measured | target | met |", "|---|---|---|---|"]
    for n, r in ratios.items():
        t = targets[n]
        lines.append(f"| {n} | {r:.3f} | {f'<= {t:.2f}' if t else '-'} | {('yes' if r <= t else 'no') if t else '-'} |")
    (out_dir / f"{stem}.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
