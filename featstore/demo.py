"""The built-in end-to-end job: write a store of synthetic per-layer features, verify it, read it back
with the batch loader and train a linear probe per layer.

The features are generated, not extracted (extraction lands with the encoder plugins): each "layer"
carries the label signal with a different strength, so the probe table shows real differences.
"""

from __future__ import annotations

import re
import shutil
import time
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from .store import FeatureStore

MARKER = ".featstore-demo"
RELATIONS = ("left", "right", "top", "bottom")
LAYERS = {"layer_2": 0.03, "layer_6": 0.08, "layer_10": 0.25}  # layer -> signal strength


def _prepare(out: Path) -> None:
    if out.exists():
        if (out / MARKER).exists():
            shutil.rmtree(out)  # our own previous demo output
        elif any(out.iterdir()):
            raise FileExistsError(f"{out} exists and is not a featstore demo folder; choose another --out")
    out.mkdir(parents=True, exist_ok=True)
    (out / MARKER).write_text("written by `featstore demo`; safe to delete\n")


def write_synthetic(store: FeatureStore, n_rows: int, dim: int, grid: tuple[int, int], seed: int) -> np.ndarray:
    """Write pooled layers and one patch-grid layer with a planted class signal; returns the labels."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, len(RELATIONS), n_rows)
    chunk = 4096
    starts = list(range(0, n_rows, chunk))
    rng.shuffle(starts)  # rows may be written in any order
    for layer, strength in LAYERS.items():
        means = rng.standard_normal((len(RELATIONS), dim)).astype(np.float32)
        meta = {"encoder": "synthetic", "layer": layer, "pooling": "cls", "signal": strength, "seed": seed}
        with store.create_feature_set(f"synthetic/{layer}", n_rows, (dim,), "float16", meta, labels) as w:
            for start in starts:
                stop = min(n_rows, start + chunk)
                x = rng.standard_normal((stop - start, dim)).astype(np.float32) + strength * means[labels[start:stop]]
                w.write(start, x.astype(np.float16))
                w.commit()
    tokens, width = grid
    side = int(np.sqrt(tokens))
    meta = {"encoder": "synthetic", "layer": "layer_10", "pooling": "patch", "grid": [side, side], "seed": seed}
    with store.create_feature_set("synthetic/layer_10_patch", n_rows, grid, "float16", meta, labels) as w:
        for start in sorted(starts):
            stop = min(n_rows, start + chunk)
            x = rng.standard_normal((stop - start, tokens, width)).astype(np.float32)
            # the relation lives in *where* the signal is: one quadrant of the grid per class
            quadrant = labels[start:stop] % tokens
            x[np.arange(stop - start), quadrant, :] += 1.0
            w.write(start, x.astype(np.float16))
    return labels


def train_probe(fs, train: np.ndarray, test: np.ndarray, epochs: int = 4, seed: int = 0) -> float:
    """Train a linear head on ``fs`` with the batch loader and return its test accuracy."""
    torch.manual_seed(seed)
    dim = int(np.prod(fs.row_shape))
    head = torch.nn.Linear(dim, len(RELATIONS))
    opt = torch.optim.Adam(head.parameters(), lr=1e-3)
    loader = fs.batches(512, rows=train, seed=seed)
    for _ in range(epochs):
        for x, y, _rows in loader:
            loss = torch.nn.functional.cross_entropy(head(x.float().flatten(1)), y)
            opt.zero_grad()
            loss.backward()
            opt.step()
    correct = 0
    with torch.no_grad():
        for x, y, _rows in fs.batches(4096, rows=test, shuffle=False):
            correct += int((head(x.float().flatten(1)).argmax(1) == y).sum())
    return correct / len(test)


def run_demo(out: str | Path, n_rows: int = 20000, dim: int = 768, seed: int = 0, log: Callable = print) -> list[dict]:
    """Run the whole job; returns one result row per feature set."""
    out = Path(out)
    _prepare(out)
    t0 = time.perf_counter()
    store = FeatureStore.create(out)
    write_synthetic(store, n_rows, dim, (16, 64), seed)
    store = FeatureStore.open(out)
    log(f"wrote {len(store)} feature sets, {n_rows} rows each, to {out} in {time.perf_counter() - t0:.1f} s")
    summary = store.verify()
    log(f"verified {summary['bytes_checked'] / 1e6:.1f} MB of checksums: ok")
    pt = store["synthetic/layer_10"].export_pt()
    log(f"exported {pt} (seed .pt format: features, labels, metadata)")

    rng = np.random.default_rng(seed)
    order = rng.permutation(n_rows)
    train, test = np.sort(order[: n_rows * 4 // 5]), np.sort(order[n_rows * 4 // 5 :])
    results = []
    for key in sorted(store.keys(), key=lambda k: [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", k)]):
        fs = store[key]
        t = time.perf_counter()
        n_bytes = sum(x.numel() * x.element_size() for x, _, _ in fs.batches(1024, seed=seed))
        gbps = n_bytes / (time.perf_counter() - t) / 1e9
        acc = train_probe(fs, train, test, seed=seed)
        results.append(
            {"key": key, "shape": fs.shape, "dtype": fs.record.dtype, "MB": fs.nbytes / 1e6,
             "epoch_GBps": gbps, "probe_acc": acc, "pooling": fs.metadata.get("pooling")}
        )
    log("")
    log(f"{'feature set':28} {'shape':>18} {'MB':>7} {'epoch GB/s':>11} {'probe acc':>10}")
    for r in results:
        log(f"{r['key']:28} {str(r['shape']):>18} {r['MB']:7.1f} {r['epoch_GBps']:11.2f} {r['probe_acc']:10.3f}")
    log(f"\nchance is {1 / len(RELATIONS):.2f}; done in {time.perf_counter() - t0:.1f} s")
    return results
