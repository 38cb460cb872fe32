"""Bit rot: flip random bits of a finished store's files; `featstore verify` must catch every one.

The store holds four finished feature sets (float16 / float32, pooled / patch grid, with and without
labels, one spanning several checksum blocks). Each trial flips ``--flips-per-trial`` random bits
(default 1), each in a random feature set's files, in a region drawn with these odds:

- header (35%): any byte of the 8-byte length, the JSON, or its space padding up to the 4096-byte boundary;
- features (35%): any byte of the row data;
- labels (15%; features when the set has none): any byte of the int64 labels;
- export (15%): any byte of the set's ``.pt`` export beside it (covered by ``checksum.export``).

Then it checks, and restores the bits before the next trial:

- ``FeatureStore.open(root)`` fails (naming the file) when a header was hit, and only then: a bad
  header is caught at open, not at some later read;
- ``featstore verify ROOT`` (the command's own ``main``, in this process) exits 1 and its message names
  every feature set hit, and none that was not.

A trial is detected when all of this holds. Every 100 trials the untouched store must verify clean.

    nice -n 10 .venv/bin/python benchmarks/reliability/bitrot.py --trials 1000 --json benchmarks/results/reliability_bitrot.json
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import random
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import add_output_options, progress_logger, write_results

from featstore import FeatureStore
from featstore.cli import main as featstore_cli
from featstore.errors import FeatureStoreError

SETS = {  # key: (rows, row shape, dtype, labels)
    "dinov2/layer_10": (2000, (768,), "float32", True),  # 6 MB: two checksum blocks
    "dinov2/layer_11/patch": (48, (257, 64), "float16", True),
    "clip/last_layer": (500, (512,), "float16", False),
    "qwen/visual_features": (300, (128,), "bfloat16", True),
}
REGIONS = (("header", 0.35), ("features", 0.35), ("labels", 0.15), ("export", 0.15))


def build_store(root: Path) -> FeatureStore:
    """The finished store the trials damage."""
    import torch

    store = FeatureStore.create(root)
    rng = np.random.default_rng(0)
    for key, (n, shape, dtype, labels) in SETS.items():
        rows = torch.from_numpy(rng.standard_normal((n, *shape), dtype=np.float32)).to(getattr(torch, dtype))
        lab = rng.integers(0, 4, n) if labels else None
        with store.create_feature_set(key, n, shape, dtype, {"encoder": key.split("/")[0]}, lab) as w:
            for a in range(0, n, 256):
                w.write(a, rows[a : a + 256])
                w.commit()
    for key in SETS:
        store[key].export_pt()
    return FeatureStore.open(root)


def regions_of(store: FeatureStore) -> dict[str, dict[str, tuple[Path, int, int]]]:
    """key -> region -> (file, first byte, end byte)."""
    out = {}
    for key in store.keys():
        fs = store[key]
        start, feats, labels = fs.header.data_start, fs.record.layout.features_bytes, fs.record.layout.labels_bytes
        out[key] = {"header": (fs.path, 0, start), "features": (fs.path, start, start + feats)}
        out[key]["labels"] = (fs.path, start + feats, start + feats + labels) if labels else out[key]["features"]
        export = fs.path.with_suffix(".pt")
        out[key]["export"] = (export, 0, export.stat().st_size)
    return out


def flip(path: Path, byte: int, bit: int) -> None:
    """Flip one bit of a (read-only) file in place, leaving its mode as it was."""
    mode = path.stat().st_mode
    path.chmod(mode | 0o200)
    try:
        fd = os.open(path, os.O_RDWR)
        try:
            (old,) = os.pread(fd, 1, byte)
            os.pwrite(fd, bytes([old ^ (1 << bit)]), byte)
        finally:
            os.close(fd)
    finally:
        path.chmod(mode)


def run_verify_command(root: Path) -> tuple[int, str]:
    """`featstore verify ROOT`: its exit code and everything it printed."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = featstore_cli(["verify", str(root)])
    return code, out.getvalue() + err.getvalue()


def trial(root: Path, regions, rng: random.Random, flips: int) -> tuple[bool, list[str], str]:
    """Flip ``flips`` bits, check, restore. Returns (detected, regions hit, what went wrong)."""
    hits = []
    for _ in range(flips):
        key = rng.choice(sorted(regions))
        region = rng.choices([r for r, _ in REGIONS], [w for _, w in REGIONS])[0]
        path, lo, hi = regions[key][region]
        hits.append((key, region, path, rng.randrange(lo, hi), rng.randrange(8)))
    for _, _, path, byte, bit in hits:
        flip(path, byte, bit)
    try:
        keys_hit = {k for k, *_ in hits}
        header_hit = any(region == "header" for _, region, *_ in hits)
        problems = []
        try:
            FeatureStore.open(root)
            if header_hit:
                problems.append("a damaged header opened without error")
        except FeatureStoreError as exc:
            if not header_hit:
                problems.append(f"open failed though no header was hit: {exc}")
            elif not any(str(p) in str(exc) for _, r, p, *_ in hits if r == "header"):
                problems.append(f"open failed without naming the damaged file: {exc}")
        code, text = run_verify_command(root)
        named = {k for k in regions if f"{k}:" in text}
        if code != 1:
            problems.append(f"featstore verify exited {code}: {text.strip()[:300]}")
        if named != keys_hit:
            problems.append(f"featstore verify named {sorted(named)}, the damaged sets are {sorted(keys_hit)}")
        return not problems, [f"{region}" for _, region, *_ in hits], "; ".join(problems)
    finally:
        for _, _, path, byte, bit in reversed(hits):
            flip(path, byte, bit)


def manifest_trial(root: Path, rng: random.Random) -> tuple[bool, str]:
    """Flip one bit of ``featstore.json``; returns (caught by open or `featstore verify`, the JSON field hit)."""
    path = root / "featstore.json"
    raw = path.read_bytes()
    byte, bit = rng.randrange(len(raw)), rng.randrange(8)
    start = raw.rfind(b"\n", 0, byte) + 1
    line = raw[start : raw.find(b"\n", byte) % (len(raw) + 1)].decode().strip()
    field = line.split('":', 1)[0].strip('"') if '":' in line else "(a value in a list)"
    flip(path, byte, bit)
    try:
        with contextlib.suppress(ValueError):
            if json.loads(path.read_bytes()) == json.loads(raw):
                return True, "(none: it parses to the same values, e.g. a float's last digit)"
        try:
            FeatureStore.open(root)
        except FeatureStoreError:
            return True, field
        return run_verify_command(root)[0] != 0, field
    finally:
        flip(path, byte, bit)


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--trials", type=int, default=1000)
    p.add_argument("--flips-per-trial", type=int, default=1)
    p.add_argument(
        "--manifest-trials",
        type=int,
        default=0,
        help="also flip this many bits of featstore.json, one per trial (reported apart)",
    )
    p.add_argument("--seed", type=int, default=0)
    add_output_options(p)
    args = p.parse_args(argv)
    log = progress_logger(args.quiet)
    rng = random.Random(args.seed)
    t0 = time.perf_counter()
    by_region: Counter = Counter()
    missed: list[str] = []
    clean_checks = 0
    with tempfile.TemporaryDirectory(prefix="featstore-bitrot-", dir=args.workdir) as tmp:
        root = Path(tmp) / "store"
        store = build_store(root)
        regions = regions_of(store)
        store_bytes = sum(r["features"][2] for r in regions.values())
        del store
        manifest_results = [manifest_trial(root, rng) for _ in range(args.manifest_trials)]
        manifest_missed = [field for caught, field in manifest_results if not caught]
        manifest_caught = [field for caught, field in manifest_results if caught]
        FeatureStore.open(root).verify()
        for i in range(args.trials):
            detected, hit, why = trial(root, regions, rng, args.flips_per_trial)
            by_region.update(hit)
            if not detected:
                missed.append(f"trial {i} ({', '.join(hit)}): {why}")
                log(f"trial {i}: MISSED: {why}")
            if (i + 1) % 100 == 0 or i + 1 == args.trials:
                FeatureStore.open(root).verify()  # the restored store is clean again
                clean_checks += 1
                log(f"{i + 1} trials, {len(missed)} missed")
    figures = {
        "bits_flipped": args.trials * args.flips_per_trial,
        "trials": args.trials,
        "flips_per_trial": args.flips_per_trial,
        "detected": args.trials - len(missed),
        "missed": len(missed),
        "flips_by_region": dict(by_region),
        "clean_verifies_between_trials": clean_checks,
        "store_bytes": store_bytes,
        "feature_sets": {
            k: {"rows": n, "row_shape": list(s), "dtype": d, "labels": lab} for k, (n, s, d, lab) in SETS.items()
        },
        "seconds": round(time.perf_counter() - t0, 1),
        "seed": args.seed,
        "missed_trials": missed[:20],
    }
    if args.manifest_trials:
        figures["manifest_bits_flipped"] = args.manifest_trials
        figures["manifest_flips_not_caught"] = len(manifest_missed)
        figures["manifest_flips_that_changed_nothing"] = sum(f.startswith("(none") for f in manifest_caught)
        figures["manifest_fields_where_not_caught"] = dict(Counter(manifest_missed).most_common())
    command = "benchmarks/reliability/bitrot.py " + " ".join(argv if argv is not None else sys.argv[1:])
    write_results(args.json, "bitrot", command.strip(), figures)
    return figures


if __name__ == "__main__":
    sys.exit(1 if main()["missed"] else 0)
