"""Shared helpers for the tests: deterministic feature data and small stores."""

from __future__ import annotations

import json
import os

import numpy as np
import torch

from featstore import FeatureStore
from featstore.spatial import row_targets


def rows_for(start: int, stop: int, row_shape, dtype=torch.float16, seed: int = 0) -> torch.Tensor:
    """Deterministic rows: row i is the same whichever call or process makes it."""
    out = []
    for i in range(start, stop):
        g = torch.Generator().manual_seed(seed * 1_000_003 + i)
        out.append(torch.randn(tuple(row_shape), generator=g).to(dtype))
    if not out:
        return torch.empty((0, *row_shape), dtype=dtype)
    return torch.stack(out)


def make_store(root, key="enc/layer_1", n_rows=64, row_shape=(16,), dtype=torch.float16, labels=True, seed=0):
    """A store with one finished feature set; returns (store, expected tensor, labels array)."""
    store = FeatureStore.create(root)
    data = rows_for(0, n_rows, row_shape, dtype, seed)
    lab = np.arange(n_rows, dtype=np.int64) % 4 if labels else None
    with store.create_feature_set(key, n_rows, row_shape, dtype, {"seed": seed}, lab) as w:
        w.write(0, data)
    return FeatureStore.open(root), data, lab


def write_probe_store(root, ds, seed=0):
    """For probe tests: a vector set whose relation is planted, one of pure noise, and a patch grid where the relation is *where* the signal is."""
    rt = row_targets(ds)
    rng = np.random.default_rng(seed)
    n = len(ds)
    store = FeatureStore.create(root)
    means = rng.standard_normal((len(rt.relations), 32)).astype(np.float32)
    x = rng.standard_normal((n, 32)).astype(np.float32) + 2.0 * means[rt.relation]
    meta = {"encoder": "toy", "layer": "layer_1", "pooling": "cls"}
    with store.create_feature_set("toy/layer_1/cls", n, (32,), "float16", meta, rt.label) as w:
        w.write(0, x.astype(np.float16))
    with store.create_feature_set("toy/layer_0/cls", n, (32,), "float16", {**meta, "layer": "layer_0"}, rt.label) as w:
        w.write(0, rng.standard_normal((n, 32)).astype(np.float16))
    g = rng.standard_normal((n, 4, 8)).astype(np.float32)
    g[np.arange(n), rt.relation % 4, :] += 3.0
    with store.create_feature_set(
        "toy/layer_1/patch", n, (4, 8), "float16", {**meta, "pooling": "patch"}, rt.label
    ) as w:
        w.write(0, g.astype(np.float16))
    return FeatureStore.open(root)


def damaged_store(tmp_path, mutate):
    """A store of one 10-row set in tmp_path, its file then damaged by mutate(file, manifest); returns the file."""
    make_store(tmp_path, n_rows=10, row_shape=(4,))
    path = tmp_path / "enc" / "layer_1.safetensors"
    os.chmod(path, 0o644)
    mutate(path, tmp_path / "featstore.json")
    return path


def edit_manifest(fn):
    """A mutate for damaged_store: fn(entry, manifest) edits the set's manifest entry in place."""

    def mutate(path, manifest):
        obj = json.loads(manifest.read_text())
        fn(obj["feature_sets"]["enc/layer_1"], obj)
        manifest.write_text(json.dumps(obj))

    return mutate
