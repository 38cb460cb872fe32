"""One probe's result from its per-setting correctness: the setting best on validation, its test accuracy
overall and per relation with 95% Wilson intervals, and one sweep row per setting. Every head kind
(SGD, ridge, logistic) reports through here, so their rows have the same fields."""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from .tasks import TaskData

SETTING_FIELDS = ("lr", "wd", "alpha", "C")  # what a setting may hold; the result has best_<field> for each


def wilson_interval(correct: int, n: int, z: float = 1.96) -> tuple[float, float]:
    """The Wilson score interval of a proportion ``correct / n`` (95% for z=1.96); (0, 1) when n == 0."""
    if n <= 0:
        return (0.0, 1.0)
    p = correct / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return (max(0.0, centre - half), min(1.0, centre + half))


def summarise(
    key: str,
    meta: dict,
    head: str,
    view: str,
    dim: int,
    n_params: int,
    settings: list[dict[str, float]],
    val: np.ndarray,
    test: np.ndarray,
    test_rel: np.ndarray,
    t: TaskData,
) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """(the result, the sweep rows) of one (feature set, head, view) from its (settings, rows) correctness;
    the best setting is the first with the best validation accuracy (deterministic)."""
    val_acc = val.mean(1)
    best = int(np.argmax(val_acc))
    sweep = [
        {"key": key, "head": head, "view": view, **s, "val_acc": float(val_acc[h]), "test_acc": float(test[h].mean())}
        for h, s in enumerate(settings)
    ]
    result = {
        "key": key,
        **key_info(key, meta),
        "head": head,
        "view": view,
        "dim": dim,
        "params": n_params,
        **{f"best_{f.lower()}": settings[best].get(f) for f in SETTING_FIELDS},
        "val_acc": float(val_acc[best]),
        **test_scores(test[best], test_rel, t),
    }
    return result, sweep


def test_scores(ok: np.ndarray, test_rel: np.ndarray, t: TaskData) -> dict[str, Any]:
    """Test accuracy of one head, overall and per relation, with 95% Wilson intervals."""
    lo, hi = wilson_interval(int(ok.sum()), len(ok))
    per_rel = {}
    for r, name in enumerate(t.relations):
        sel = test_rel == r
        if sel.any():
            c, n = int(ok[sel].sum()), int(sel.sum())
            rlo, rhi = wilson_interval(c, n)
            per_rel[name] = {"acc": c / n, "ci_low": rlo, "ci_high": rhi, "n": n}
    return {
        "test_acc": float(ok.mean()),
        "ci_low": lo,
        "ci_high": hi,
        "n_test": len(ok),
        "per_relation": per_rel,
        "chance": 1.0 / len(t.classes),
    }


def key_info(key: str, meta: dict) -> dict[str, Any]:
    """Encoder, layer and pooling of a set: from its metadata, else from its key ``encoder/layer/pooling``."""
    parts = key.split("/")
    return {
        "encoder": meta.get("encoder", parts[0]),
        "layer": str(meta.get("layer", parts[1] if len(parts) > 1 else key)),
        "pooling": meta.get("pooling", parts[2] if len(parts) > 2 else ""),
    }
