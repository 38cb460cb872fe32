"""Shared helpers for the tests: deterministic feature data and small stores."""

from __future__ import annotations

import numpy as np
import torch

from featstore import FeatureStore


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
