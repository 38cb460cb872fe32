"""Linear probes on stored features: many heads trained in one pass over each feature set.

For every selected feature set, every head of a sweep (learning rates x weight decays, and for a
patch-grid set both a head over the flattened grid and one over the grid's mean) reads the same
batch: each batch is gathered once per feature set by its loader (``fs.batches(rows=train)``) and
all heads of one input view are one stacked matrix, so one matmul serves them all. The split is by
image (:func:`featstore.spatial_split.split_indices`); each (feature set, view) keeps the setting
that is best on validation and reports its test accuracy overall and per relation, with a 95%
Wilson interval.

Tasks: ``relation`` (which relation holds, on the rows whose label is 1), ``binary`` (does the
row's relation hold; one output per relation, the row's relation picks the one it is scored on) or
the name of any integer column of the dataset (its distinct values are the classes).
"""

from __future__ import annotations

import fnmatch
import math
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import numpy as np
import torch

TASKS = ("relation", "binary")
DEFAULT_LRS = (1e-3, 3e-3, 1e-2)
DEFAULT_WDS = (0.0, 1e-4)


def wilson_interval(correct: int, n: int, z: float = 1.96) -> tuple[float, float]:
    """The Wilson score interval of a proportion ``correct / n`` (95% for z=1.96); (0, 1) when n == 0."""
    if n <= 0:
        return (0.0, 1.0)
    p = correct / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return (max(0.0, centre - half), min(1.0, centre + half))


@dataclass
class TaskData:
    """What a task makes of a dataset: the rows it uses, each row's class, and its relation code."""

    name: str
    rows: np.ndarray            # dataset rows the task uses (sorted)
    target: np.ndarray          # per dataset row: the class (-1 where unused)
    relation: np.ndarray        # per dataset row: the relation code (0 when the dataset has none)
    relations: tuple[str, ...]
    classes: list[str]
    n_outputs: int              # outputs per head
    binary: bool                # scored with one logit picked by the relation


def make_task(ds, task: str) -> TaskData:
    """The rows, targets and relations of ``task`` on ``ds``."""
    from .spatial import _column
    from .spatial_join import row_targets

    n = len(ds)
    try:
        rt = row_targets(ds)
        relation, relations = rt.relation, rt.relations
        label = rt.label
    except Exception:
        relation, relations, label = np.zeros(n, dtype=np.int64), ("all",), None
    if task == "relation":
        if label is None:
            raise ValueError("task 'relation' needs a spatial dataset (spatial_relation and label columns)")
        rows = np.flatnonzero(label == 1)
        target = np.where(label == 1, relation, -1)
        return TaskData(task, rows, target, relation, relations, list(relations), len(relations), False)
    if task == "binary":
        if label is None:
            raise ValueError("task 'binary' needs a spatial dataset (spatial_relation and label columns)")
        return TaskData(task, np.arange(n), label.astype(np.int64), relation, relations, ["false", "true"],
                        len(relations), True)
    if task not in ds.column_names:
        raise ValueError(f"task must be one of {TASKS} or an integer column of the dataset ({', '.join(ds.column_names)}); "
                         f"got {task!r}")
    values = np.asarray(_column(ds, task))
    if values.dtype.kind not in "iub":
        raise ValueError(f"column {task!r} is not an integer column (dtype {values.dtype}); it cannot be a probe target")
    classes, target = np.unique(values.astype(np.int64), return_inverse=True)
    if len(classes) < 2:
        raise ValueError(f"column {task!r} has a single value; there is nothing to probe")
    return TaskData(task, np.arange(n), target.reshape(-1).astype(np.int64), relation, relations,
                    [str(c) for c in classes], len(classes), False)


@dataclass
class _Group:
    """The stacked heads of one input view of one feature set."""

    view: str                   # 'linear' (a vector set), 'flat' or 'mean' (a patch grid)
    dim: int
    settings: list[tuple[float, float]]
    n_out: int
    weight: torch.Tensor = field(init=False)
    bias: torch.Tensor = field(init=False)

    def __post_init__(self):
        self.h = len(self.settings)

    def setup(self, device, mean: torch.Tensor, std: torch.Tensor):
        self.weight = torch.nn.Parameter(torch.zeros(self.dim, self.h * self.n_out, device=device))
        self.bias = torch.nn.Parameter(torch.zeros(self.h * self.n_out, device=device))
        self.mean, self.inv_std = mean.to(device), (1.0 / std).to(device)
        self.lr = torch.tensor([lr for lr, _ in self.settings], device=device).repeat_interleave(self.n_out)
        self.wd = torch.tensor([wd for _, wd in self.settings], device=device).repeat_interleave(self.n_out)
        self.state = [torch.zeros_like(t) for t in (self.weight, self.weight, self.bias, self.bias)]
        self.step = 0

    def inputs(self, x: torch.Tensor) -> torch.Tensor:
        x = x.float()
        x = x.mean(1) if self.view == "mean" else x.flatten(1)
        return (x - self.mean) * self.inv_std

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        """(batch, heads, outputs) from the view's input: one matmul for all heads."""
        return (x @ self.weight + self.bias).view(len(x), self.h, self.n_out)


class _Heads(torch.nn.Module):
    """Every view's stacked heads of one feature set as one module, so DistributedDataParallel can wrap it:
    ``forward(x)`` is the list of each view's (batch, heads, outputs) logits."""

    def __init__(self, groups: list[_Group]):
        super().__init__()
        self.groups = groups
        for g in groups:
            self.register_parameter(f"{g.view}_weight", g.weight)
            self.register_parameter(f"{g.view}_bias", g.bias)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        return [g.logits(g.inputs(x)) for g in self.groups]


def _data_parallel(heads: _Heads, ranks, device: torch.device) -> torch.nn.Module:
    """``heads`` wrapped in DistributedDataParallel under torchrun (gradients averaged over the ranks), else itself."""
    if not ranks.distributed:
        return heads
    from torch.nn.parallel import DistributedDataParallel

    return DistributedDataParallel(heads, device_ids=[device.index] if device.type == "cuda" else None)


def _scores(group: _Group, logits: torch.Tensor, y: torch.Tensor, rel: torch.Tensor, binary: bool):
    """Per-head loss (summed over heads) and per-head predictions."""
    if binary:
        picked = logits.gather(2, rel.view(-1, 1, 1).expand(-1, group.h, 1)).squeeze(2)  # (batch, heads)
        target = y.float().view(-1, 1).expand_as(picked)
        loss = torch.nn.functional.binary_cross_entropy_with_logits(picked, target, reduction="mean") * group.h
        return loss, (picked > 0).long()
    flat = logits.reshape(-1, group.n_out)
    loss = torch.nn.functional.cross_entropy(flat, y.repeat_interleave(group.h), reduction="mean") * group.h
    return loss, logits.argmax(2)


def _adamw(group: _Group, gw: torch.Tensor, gb: torch.Tensor, b1=0.9, b2=0.999, eps=1e-8):
    """One AdamW step of every head, each column with its own learning rate and weight decay."""
    group.step += 1
    c1, c2 = 1 - b1 ** group.step, 1 - b2 ** group.step
    mw, vw, mb, vb = group.state
    for p, g, m, v, decay in ((group.weight, gw, mw, vw, True), (group.bias, gb, mb, vb, False)):
        m.mul_(b1).add_(g, alpha=1 - b1)
        v.mul_(b2).addcmul_(g, g, value=1 - b2)
        if decay:
            p.mul_(1 - group.lr * group.wd)
        p.sub_(group.lr * (m / c1) / ((v / c2).sqrt() + eps))


def _views(fs) -> list[str]:
    return ["linear"] if len(fs.row_shape) == 1 else ["flat", "mean"]


def _standardisation(fs, rows: np.ndarray, view: str, seed: int, sample: int = 4096):
    rng = np.random.default_rng([seed, 7])
    pick = np.sort(rng.choice(rows, size=min(sample, len(rows)), replace=False))
    x = fs[pick].float()
    x = x.mean(1) if view == "mean" else x.flatten(1)
    return x.mean(0), x.std(0).clamp_min(1e-6)


def _evaluate(fs, groups: list[_Group], rows: np.ndarray, labels: np.ndarray, task: TaskData, device, batch_size: int):
    """Per group: (heads, rows) correctness, and the rows' relation codes."""
    correct = {g.view: [] for g in groups}
    rels = []
    with torch.no_grad():
        for x, y, idx in fs.batches(batch_size, rows=rows, labels=labels, shuffle=False, device=device, rank=0,
                                    world_size=1):
            t, r = y // len(task.relations), y % len(task.relations)
            rels.append(r.cpu())
            for g in groups:
                _, pred = _scores(g, g.logits(g.inputs(x)), t, r, task.binary)
                correct[g.view].append((pred == t.view(-1, 1)).T.cpu())
    return {v: torch.cat(c, 1).numpy() for v, c in correct.items()}, torch.cat(rels).numpy()


def _key_info(key: str, meta: dict) -> dict[str, Any]:
    parts = key.split("/")
    return {"encoder": meta.get("encoder", parts[0]), "layer": str(meta.get("layer", parts[1] if len(parts) > 1 else key)),
            "pooling": meta.get("pooling", parts[2] if len(parts) > 2 else "")}


def train_probes(store, dataset, keys="*", task: str = "relation", *, split: str | None = None, lrs: Sequence[float] = DEFAULT_LRS,
                 wds: Sequence[float] = DEFAULT_WDS, epochs: int = 10, batch_size: int = 256, seed: int = 0,
                 fractions=(0.7, 0.15, 0.15), device: str | None = None, log: Callable[[str], None] | None = None) -> dict:
    """Train linear probes on every feature set of ``store`` matching ``keys`` (glob patterns, a string or
    a list) for ``task`` on ``dataset`` (a ``datasets.Dataset`` or a folder; ``split`` picks one of a
    DatasetDict). Returns ``{"settings": ..., "results": [...], "sweep": [...]}``: one result per
    (feature set, view) with its best setting on validation and test accuracy, overall and per relation,
    with 95% Wilson intervals. The same seed gives the same numbers on the same machine and device.

    Under torchrun (or in an initialised process group) every rank trains on its share of each batch:
    ``batch_size // world_size`` rows, so the global batch stays ``batch_size``, and the heads are
    wrapped in DistributedDataParallel; every rank returns the same results.
    """
    from .distributed import ensure_process_group, local_device
    from .extraction import _load_dataset
    from .spatial_split import split_indices
    from .store import FeatureStore

    if not isinstance(store, FeatureStore):
        store = FeatureStore.open(store)
    ds = _load_dataset(dataset, split)
    patterns = [keys] if isinstance(keys, str) else list(keys)
    selected = [k for k in store.keys() if any(fnmatch.fnmatchcase(k, p) for p in patterns)]
    if not selected:
        raise ValueError(f"no feature set of {store.root} matches {patterns}; it has {', '.join(store.keys()[:12])}")
    lrs, wds = [float(v) for v in lrs], [float(v) for v in wds]
    if not lrs or not wds or epochs < 1:
        raise ValueError("lrs and wds must be non-empty and epochs >= 1")
    settings = [(lr, wd) for lr in lrs for wd in wds]
    t = make_task(ds, task)
    parts = split_indices(ds, seed, fractions)
    in_task = np.zeros(len(ds), dtype=bool)
    in_task[t.rows] = True
    rows = {name: idx[in_task[idx]] for name, idx in parts.items()}
    for name, idx in rows.items():
        if len(idx) == 0:
            raise ValueError(f"the {name} split has no rows for task {task!r}; use a larger dataset")
    labels = np.where(t.target >= 0, t.target * len(t.relations) + t.relation, -1).astype(np.int64)
    ranks = ensure_process_group(device)
    device = local_device(device if device is not None else "cpu")
    results, sweep = [], []
    for key in selected:
        fs = store[key]
        if len(fs) != len(ds):
            raise ValueError(f"feature set {key!r} has {len(fs)} rows but the dataset has {len(ds)}; row i of a feature set "
                             "is row i of the dataset it was extracted from")
        t0 = time.perf_counter()
        torch.manual_seed(seed)
        groups = []
        for view in _views(fs):
            dim = int(fs.row_shape[-1]) if view == "mean" else int(np.prod(fs.row_shape))
            g = _Group(view, dim, settings, t.n_outputs)
            g.setup(device, *_standardisation(fs, rows["train"], view, seed))
            groups.append(g)
        heads = _Heads(groups)
        net = _data_parallel(heads, ranks, device)
        loader = fs.batches(max(1, batch_size // ranks.world_size), rows=rows["train"], labels=labels, seed=seed,
                            device=device, rank=ranks.rank, world_size=ranks.world_size)
        for _ in range(epochs):
            for x, y, _idx in loader:  # one gather, shared by every head
                tgt, rel = y // len(t.relations), y % len(t.relations)
                loss = sum(_scores(g, out, tgt, rel, t.binary)[0] for g, out in zip(groups, net(x)))
                heads.zero_grad(set_to_none=True)
                loss.backward()  # under DDP: the gradients averaged over the ranks
                with torch.no_grad():
                    for g in groups:
                        _adamw(g, g.weight.grad, g.bias.grad)
        val, _ = _evaluate(fs, groups, rows["validation"], labels, t, device, 4096)
        test, test_rel = _evaluate(fs, groups, rows["test"], labels, t, device, 4096)
        info = _key_info(key, fs.metadata)
        for g in groups:
            val_acc = val[g.view].mean(1)
            for h, (lr, wd) in enumerate(settings):
                sweep.append({"key": key, "view": g.view, "lr": lr, "wd": wd, "val_acc": float(val_acc[h]),
                              "test_acc": float(test[g.view][h].mean())})
            best = int(np.argmax(val_acc))  # first best: deterministic
            ok = test[g.view][best]
            lo, hi = wilson_interval(int(ok.sum()), len(ok))
            per_rel = {}
            for r, name in enumerate(t.relations):
                sel = test_rel == r
                if sel.any():
                    c = int(ok[sel].sum())
                    rlo, rhi = wilson_interval(c, int(sel.sum()))
                    per_rel[name] = {"acc": c / int(sel.sum()), "ci_low": rlo, "ci_high": rhi, "n": int(sel.sum())}
            results.append({"key": key, **info, "head": g.view, "dim": g.dim, "best_lr": settings[best][0],
                            "best_wd": settings[best][1], "val_acc": float(val_acc[best]), "test_acc": float(ok.mean()),
                            "ci_low": lo, "ci_high": hi, "n_test": int(len(ok)), "per_relation": per_rel,
                            "chance": 1.0 / len(t.classes)})
        if log:
            log(f"{key}: {len(groups) * len(settings)} heads, {epochs} epochs in {time.perf_counter() - t0:.2f} s")
    return {"settings": {"task": task, "classes": t.classes, "relations": list(t.relations), "keys": selected,
                         "lrs": lrs, "wds": wds, "epochs": epochs, "batch_size": batch_size, "seed": seed,
                         "fractions": list(fractions), "device": str(device), "world_size": ranks.world_size,
                         "rows": {k: int(len(v)) for k, v in rows.items()}},
            "results": results, "sweep": sweep}
