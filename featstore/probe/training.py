"""Linear probes on stored features: many heads trained in one pass over each feature set.

For every selected feature set, every head of a sweep (learning rates x weight decays, and for a
patch-grid set both a head over the flattened grid and one over the grid's mean) reads the same
batch: each batch is gathered once per feature set by its loader (``fs.batches(rows=train)``) and
all heads of one input view are one stacked matrix, so one matmul serves them all. The split is by
image (:func:`featstore.spatial.split_indices`); each (feature set, view) keeps the setting
that is best on validation and reports its test accuracy overall and per relation, with a 95%
Wilson interval.
Tasks are in :mod:`featstore.probe.tasks`, the stacked heads in :mod:`featstore.probe.heads`.
"""

from __future__ import annotations

import fnmatch
import math
import time
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch

from ..batches import FeatureSet, FeatureStore
from ..distributed import Ranks, ensure_process_group, local_device
from ..spatial import load_dataset
from .heads import HeadGroup, StackedHeads, adamw_step, data_parallel, scores, standardisation, views
from .tasks import TaskData, encoded_labels, make_task, task_rows

DEFAULT_LRS = (1e-3, 3e-3, 1e-2)
DEFAULT_WDS = (0.0, 1e-4)
EVAL_BATCH = 4096


def wilson_interval(correct: int, n: int, z: float = 1.96) -> tuple[float, float]:
    """The Wilson score interval of a proportion ``correct / n`` (95% for z=1.96); (0, 1) when n == 0."""
    if n <= 0:
        return (0.0, 1.0)
    p = correct / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return (max(0.0, centre - half), min(1.0, centre + half))


def train_probes(
    store,
    dataset,
    keys="*",
    task: str = "relation",
    *,
    split: str | None = None,
    lrs: Sequence[float] = DEFAULT_LRS,
    wds: Sequence[float] = DEFAULT_WDS,
    epochs: int = 10,
    batch_size: int = 256,
    seed: int = 0,
    fractions=(0.7, 0.15, 0.15),
    device: str | None = None,
    log: Callable[[str], None] | None = None,
) -> dict:
    """Train linear probes on every feature set of ``store`` matching ``keys`` (glob patterns, a string or
    a list) for ``task`` on ``dataset`` (a ``datasets.Dataset`` or a folder; ``split`` picks one of a
    DatasetDict). Returns ``{"settings": ..., "results": [...], "sweep": [...]}``: one result per
    (feature set, view) with its best setting on validation and test accuracy, overall and per relation,
    with 95% Wilson intervals. The same seed gives the same numbers on the same machine and device.

    Under torchrun (or in an initialised process group) every rank trains on its share of each batch:
    ``batch_size // world_size`` rows, so the global batch stays ``batch_size``, and the heads are
    wrapped in DistributedDataParallel; every rank returns the same results.
    """
    if not isinstance(store, FeatureStore):
        store = FeatureStore.open(store, strict=False)  # a broken set is skipped unless selected
    ds = load_dataset(dataset, split, error=ValueError)
    selected = _select(store, keys, log)
    lrs, wds = [float(v) for v in lrs], [float(v) for v in wds]
    if not lrs or not wds or epochs < 1:
        raise ValueError("lrs and wds must be non-empty and epochs >= 1")
    settings = [(lr, wd) for lr in lrs for wd in wds]
    t = make_task(ds, task)
    rows = task_rows(ds, t, seed, fractions)
    labels = encoded_labels(t)
    ranks = ensure_process_group(device)
    run_device = local_device(device if device is not None else "cpu")
    results, sweep = [], []
    for key in selected:
        fs = store[key]
        if len(fs) != len(ds):
            raise ValueError(
                f"feature set {key!r} has {len(fs)} rows but the dataset has {len(ds)}; row i of a feature set "
                "is row i of the dataset it was extracted from"
            )
        t0 = time.perf_counter()
        groups = _train(fs, t, rows["train"], labels, settings, epochs, batch_size, seed, ranks, run_device)
        val, _ = _evaluate(fs, groups, rows["validation"], labels, t, run_device)
        test, test_rel = _evaluate(fs, groups, rows["test"], labels, t, run_device)
        info = _key_info(key, fs.metadata)
        for g in groups:
            best, swept = _sweep(key, g, settings, val[g.view], test[g.view])
            sweep += swept
            results.append(
                {
                    "key": key,
                    **info,
                    "head": g.view,
                    "dim": g.dim,
                    "best_lr": settings[best][0],
                    "best_wd": settings[best][1],
                    "val_acc": float(val[g.view].mean(1)[best]),
                    **_test_scores(test[g.view][best], test_rel, t),
                }
            )
        if log:
            log(f"{key}: {len(groups) * len(settings)} heads, {epochs} epochs in {time.perf_counter() - t0:.2f} s")
    return {
        "settings": {
            "task": task,
            "classes": t.classes,
            "relations": list(t.relations),
            "keys": selected,
            "lrs": lrs,
            "wds": wds,
            "epochs": epochs,
            "batch_size": batch_size,
            "seed": seed,
            "fractions": list(fractions),
            "device": str(run_device),
            "world_size": ranks.world_size,
            "rows": {k: len(v) for k, v in rows.items()},
        },
        "results": results,
        "sweep": sweep,
    }


def _select(store: FeatureStore, keys, log: Callable[[str], None] | None = None) -> list[str]:
    """The store's keys matching any of the glob patterns ``keys`` (a string or a list), less the broken
    sets (said through ``log``)."""
    patterns = [keys] if isinstance(keys, str) else list(keys)
    if not len(store):
        raise ValueError(
            f"{store.root} holds no feature sets; write some first with `featstore extract {store.root} ...`"
        )
    matched = [k for k in store.keys() if any(fnmatch.fnmatchcase(k, p) for p in patterns)]
    if not matched:
        shown = ", ".join(store.keys()[:12]) + (", ..." if len(store) > 12 else "")
        raise ValueError(
            f"no feature set of {store.root} matches {patterns}; it has {len(store)}: {shown} (pass --keys GLOB)"
        )
    broken = [k for k in matched if k in store.problems]
    if broken and log is not None:
        log(f"skipped {len(broken)} broken feature set(s): {', '.join(broken)} (see `featstore verify {store.root}`)")
    selected = [k for k in matched if k not in store.problems]
    if not selected:
        raise store.problems[broken[0]]
    return selected


def _train(
    fs: FeatureSet,
    t: TaskData,
    train_rows: np.ndarray,
    labels: np.ndarray,
    settings: list[tuple[float, float]],
    epochs: int,
    batch_size: int,
    seed: int,
    ranks: Ranks,
    device: torch.device,
) -> list[HeadGroup]:
    """Every head of every view of ``fs``, trained for ``epochs`` on one shared gather per batch."""
    torch.manual_seed(seed)
    groups = []
    for view in views(fs):
        dim = int(fs.row_shape[-1]) if view == "mean" else int(np.prod(fs.row_shape))
        g = HeadGroup(view, dim, settings, t.n_outputs)
        g.setup(device, *standardisation(fs, train_rows, view, seed))
        groups.append(g)
    heads = StackedHeads(groups)
    net = data_parallel(heads, ranks, device)
    loader = fs.batches(
        max(1, batch_size // ranks.world_size),
        rows=train_rows,
        labels=labels,
        seed=seed,
        device=device,
        rank=ranks.rank,
        world_size=ranks.world_size,
    )
    for _ in range(epochs):
        for x, y, _idx in loader:  # one gather, shared by every head
            assert isinstance(x, torch.Tensor) and y is not None  # one feature set, labels given
            tgt, rel = y // len(t.relations), y % len(t.relations)
            loss = sum(scores(g, out, tgt, rel, t.binary)[0] for g, out in zip(groups, net(x)))
            assert isinstance(loss, torch.Tensor)  # views() gives every set at least one head group
            heads.zero_grad(set_to_none=True)
            loss.backward()  # under DDP: the gradients averaged over the ranks
            with torch.no_grad():
                for g in groups:
                    gw, gb = g.weight.grad, g.bias.grad
                    assert gw is not None and gb is not None  # every head is in the loss: backward() set them
                    adamw_step(g, gw, gb)
    return groups


def _evaluate(
    fs: FeatureSet, groups: list[HeadGroup], rows: np.ndarray, labels: np.ndarray, task: TaskData, device: torch.device
) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """Per view: (heads, rows) correctness, and the rows' relation codes."""
    correct: dict[str, list[torch.Tensor]] = {g.view: [] for g in groups}
    rels = []
    with torch.no_grad():
        for x, y, _idx in fs.batches(
            EVAL_BATCH, rows=rows, labels=labels, shuffle=False, device=device, rank=0, world_size=1
        ):
            assert isinstance(x, torch.Tensor) and y is not None  # one feature set, labels given
            t, r = y // len(task.relations), y % len(task.relations)
            rels.append(r.cpu())
            for g in groups:
                _, pred = scores(g, g.logits(g.inputs(x)), t, r, task.binary)
                correct[g.view].append((pred == t.view(-1, 1)).T.cpu())
    return {v: torch.cat(c, 1).numpy() for v, c in correct.items()}, torch.cat(rels).numpy()


def _sweep(
    key: str, g: HeadGroup, settings: list[tuple[float, float]], val: np.ndarray, test: np.ndarray
) -> tuple[int, list[dict[str, Any]]]:
    """The head best on validation (the first best: deterministic) and one sweep row per setting."""
    val_acc = val.mean(1)
    rows = [
        {
            "key": key,
            "view": g.view,
            "lr": lr,
            "wd": wd,
            "val_acc": float(val_acc[h]),
            "test_acc": float(test[h].mean()),
        }
        for h, (lr, wd) in enumerate(settings)
    ]
    return int(np.argmax(val_acc)), rows


def _test_scores(ok: np.ndarray, test_rel: np.ndarray, t: TaskData) -> dict[str, Any]:
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


def _key_info(key: str, meta: dict) -> dict[str, Any]:
    parts = key.split("/")
    return {
        "encoder": meta.get("encoder", parts[0]),
        "layer": str(meta.get("layer", parts[1] if len(parts) > 1 else key)),
        "pooling": meta.get("pooling", parts[2] if len(parts) > 2 else ""),
    }
