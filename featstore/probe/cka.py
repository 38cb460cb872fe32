"""Linear CKA between feature sets (layers x encoders), in one streaming pass: per set Σx, per pair of
sets XᵢᵀXⱼ in float64, never the rows themselves; patch grids are mean-pooled over their tokens first.

CKA(X, Y) = ||XcᵀYc||²_F / (||XcᵀXc||_F ||YcᵀYc||_F) with Xc, Yc the column-centred rows (Kornblith
et al. 2019): 1 for representations equal up to rotation and scale, near 0 for unrelated ones.
"""

from __future__ import annotations

import fnmatch
from typing import Any

import numpy as np
import torch

from ..batches import FeatureStore

MAX_PAIR_BYTES = 2 << 30  # the float64 cross-products of every pair together; more keys: fewer at a time


def _vectors(x: torch.Tensor) -> torch.Tensor:
    """A batch as one float64 vector per row: a patch grid (rows, tokens, D) mean-pooled over tokens."""
    x = x.double()
    return x.mean(1) if x.dim() == 3 else x.flatten(1)


def linear_cka(store, keys="*", *, batch_size: int = 4096, rows=None, device: str | None = None) -> dict[str, Any]:
    """Linear CKA between every pair of the sets of ``store`` matching ``keys`` (globs, a string or a list),
    over all their rows or the row numbers ``rows``. Returns ``{"keys", "matrix", "n_rows", "dims",
    "grids"}``: ``matrix[i][j]`` is CKA(keys[i], keys[j]), symmetric with ones on the diagonal."""
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
    if not isinstance(store, FeatureStore):
        store = FeatureStore.open(store)
    patterns = [keys] if isinstance(keys, str) else list(keys)
    selected = [k for k in store.keys() if any(fnmatch.fnmatchcase(k, p) for p in patterns)]
    if len(selected) < 2:
        raise ValueError(f"CKA compares at least two feature sets; {patterns} match {selected} in {store.root}")
    sets = {k: store[k] for k in selected}
    n_rows = {len(fs) for fs in sets.values()}
    if len(n_rows) > 1:
        raise ValueError(
            "the sets have different row counts ({}); CKA needs the same rows (the same dataset) in every set".format(
                ", ".join(f"{k}: {len(fs)}" for k, fs in sets.items())
            )
        )
    dims = {
        k: int(fs.row_shape[-1]) if len(fs.row_shape) == 2 else int(np.prod(fs.row_shape)) for k, fs in sets.items()
    }
    need = sum(dims[a] * dims[b] for i, a in enumerate(selected) for b in selected[i:]) * 8
    if need > MAX_PAIR_BYTES:
        raise ValueError(f"the pairwise sums of {len(selected)} sets need {need / 2**30:.1f} GiB; compare fewer keys")
    dev = torch.device(device or "cpu")
    z = {k: torch.zeros(dims[k], dtype=torch.float64, device=dev) for k in selected}
    cross = {
        (a, b): torch.zeros(dims[a], dims[b], dtype=torch.float64, device=dev)
        for i, a in enumerate(selected)
        for b in selected[i:]
    }
    n = 0
    for x, _y, _idx in store.batches(
        selected, batch_size, rows=rows, labels=False, shuffle=False, device=dev, single=False, rank=0, world_size=1
    ):
        assert isinstance(x, dict)  # several sets
        v = {k: _vectors(x[k]) for k in selected}
        n += len(next(iter(v.values())))
        for k in selected:
            z[k] += v[k].sum(0)
        for (a, b), c in cross.items():
            c.addmm_(v[a].T, v[b])
    hsic = {}
    for (a, b), c in cross.items():
        centred = c - torch.outer(z[a], z[b]) / n  # XᵀY - n μx μyᵀ
        hsic[a, b] = float((centred * centred).sum())
    m = np.eye(len(selected))
    for i, a in enumerate(selected):
        for j in range(i + 1, len(selected)):
            b = selected[j]
            denom = np.sqrt(hsic[a, a] * hsic[b, b])
            m[i, j] = m[j, i] = hsic[a, b] / denom if denom > 0 else float("nan")
    return {
        "keys": selected,
        "matrix": m.tolist(),
        "n_rows": n,
        "dims": dims,
        "grids": "patch grids are mean-pooled over their tokens (one vector per row) before CKA",
    }
