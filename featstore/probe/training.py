"""Probes on stored features: the run (:func:`train_probes`) and its SGD linear heads, trained many
at once in one pass over each feature set; ridge (:mod:`.ridge`) and logistic (:mod:`.logistic`) heads
join the same run and report through :mod:`.results`.

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
import time
from collections.abc import Callable, Sequence

import numpy as np
import torch

from ..batches import FeatureSet, FeatureStore
from ..distributed import Ranks, ensure_process_group, local_device
from ..spatial import load_dataset
from .heads import HeadGroup, StackedHeads, adamw_step, data_parallel, scores, standardisation, view_dim, views
from .logistic import DEFAULT_CS, logistic_probe
from .options import HEADS, check_options
from .results import summarise
from .ridge import DEFAULT_ALPHAS, MAX_DIM, ridge_probes
from .splits import load_split, split_record
from .tasks import TaskData, encoded_labels, make_task, task_rows

DEFAULT_LRS = (1e-3, 3e-3, 1e-2)
DEFAULT_WDS = (0.0, 1e-4)
EVAL_BATCH = 4096
VIEW_ORDER = ("vector", "flat", "mean")


def train_probes(
    store,
    dataset,
    keys="*",
    task: str = "relation",
    *,
    heads: str | Sequence[str] = ("linear",),
    split: str | None = None,
    split_file=None,
    lrs: Sequence[float] = DEFAULT_LRS,
    wds: Sequence[float] = DEFAULT_WDS,
    alphas: Sequence[float] = DEFAULT_ALPHAS,
    cs: Sequence[float] = DEFAULT_CS,
    epochs: int = 10,
    batch_size: int = 256,
    seed: int = 0,
    fractions=(0.7, 0.15, 0.15),
    device: str | None = None,
    log: Callable[[str], None] | None = None,
) -> dict:
    """Train probes on every feature set of ``store`` matching ``keys`` (glob patterns, a string or a list)
    for ``task`` on ``dataset`` (a ``datasets.Dataset`` or a folder; ``split`` picks one of a DatasetDict).

    ``heads`` is any of ``linear`` (SGD heads over ``lrs`` x ``wds``), ``ridge`` (closed form over
    ``alphas``) and ``logistic`` (L-BFGS over ``cs``), a list or ``"linear,ridge"``. ``split_file`` (a
    ``split.json`` of an earlier run) reuses its rows instead of splitting. Every option is checked
    before any work starts (``ValueError``). Returns ``{"settings", "results", "sweep", "split", "skipped"}``:
    one result per (feature set, head, view) with its best setting on validation and test accuracy, overall
    and per relation, with 95% Wilson intervals; ``split`` is what :func:`write_results` saves as
    ``split.json``. The same seed gives the same numbers on the same machine and device.

    Under torchrun (or in an initialised process group) every rank trains the linear heads on its share of
    each batch: ``batch_size // world_size`` rows, so the global batch stays ``batch_size``, and the heads
    are wrapped in DistributedDataParallel; ridge and logistic run whole on every rank. Every rank returns
    the same results.
    """
    o = check_options(
        heads=heads,
        lrs=lrs,
        wds=wds,
        alphas=alphas,
        cs=cs,
        epochs=epochs,
        batch_size=batch_size,
        seed=seed,
        fractions=fractions,
    )
    if not isinstance(store, FeatureStore):
        store = FeatureStore.open(store)
    selected = _select(store, keys)
    ds = load_dataset(dataset, split, error=ValueError)
    for key in selected:
        if len(store[key]) != len(ds):
            raise ValueError(
                f"feature set {key!r} has {len(store[key])} rows but the dataset has {len(ds)}; row i of a feature "
                "set is row i of the dataset it was extracted from"
            )
    settings = [(lr, wd) for lr in o["lrs"] for wd in o["wds"]]
    t = make_task(ds, task)
    if split_file is not None:
        rows = load_split(split_file, t, len(ds))
    else:
        rows = task_rows(ds, t, seed, o["fractions"])
    labels = encoded_labels(t)
    ranks = ensure_process_group(device)
    run_device = local_device(device if device is not None else "cpu")
    found: list[tuple[dict, list[dict]]] = []
    closed = {key: [v for v in views(store[key]) if view_dim(store[key].row_shape, v) <= MAX_DIM] for key in selected}
    skipped = [
        {"key": key, "view": v, "heads": [h for h in o["heads"] if h != "linear"], "why": f"wider than {MAX_DIM}"}
        for key in selected
        for v in views(store[key])
        if v not in closed[key] and set(o["heads"]) - {"linear"}
    ]
    if "linear" in o["heads"]:
        for key in selected:
            fs = store[key]
            t0 = time.perf_counter()
            groups = _train(
                fs, t, rows["train"], labels, settings, o["epochs"], o["batch_size"], seed, ranks, run_device
            )
            val, _ = _evaluate(fs, groups, rows["validation"], labels, t, run_device)
            test, test_rel = _evaluate(fs, groups, rows["test"], labels, t, run_device)
            grid = [{"lr": lr, "wd": wd} for lr, wd in settings]
            for g in groups:
                n_params = g.dim * g.n_out + g.n_out
                found.append(
                    summarise(
                        key,
                        fs.metadata,
                        "linear",
                        g.view,
                        g.dim,
                        n_params,
                        grid,
                        val[g.view],
                        test[g.view],
                        test_rel,
                        t,
                    )
                )
            if log:
                log(
                    f"{key}: {len(groups) * len(settings)} linear heads, {epochs} epochs in {time.perf_counter() - t0:.2f} s"
                )
    if "ridge" in o["heads"] and any(closed.values()):
        t0 = time.perf_counter()
        ridge_views = {k: v for k, v in closed.items() if v}
        solved = ridge_probes(store, ridge_views, t, rows, labels, o["alphas"], EVAL_BATCH, run_device)
        grid = [{"alpha": a} for a in o["alphas"]]
        for (key, view), (val_ok, test_ok, test_rel) in solved.items():
            dim = view_dim(store[key].row_shape, view)
            n_params = ridge_params(dim, t)
            found.append(
                summarise(key, store[key].metadata, "ridge", view, dim, n_params, grid, val_ok, test_ok, test_rel, t)
            )
        if log:
            log(f"ridge: {len(solved)} views x {len(grid)} strengths in one pass, {time.perf_counter() - t0:.2f} s")
    if "logistic" in o["heads"]:
        grid = [{"C": c} for c in o["cs"]]
        for key, vs in closed.items():
            t0 = time.perf_counter()
            for view in vs:
                val_ok, test_ok, test_rel = logistic_probe(store[key], view, t, rows, labels, o["cs"], run_device)
                dim = view_dim(store[key].row_shape, view)
                n_out = len(t.relations) if t.binary else len(t.classes)
                found.append(
                    summarise(
                        key,
                        store[key].metadata,
                        "logistic",
                        view,
                        dim,
                        dim * n_out + n_out,
                        grid,
                        val_ok,
                        test_ok,
                        test_rel,
                        t,
                    )
                )
            if log and vs:
                log(f"{key}: logistic over {len(grid)} C values in {time.perf_counter() - t0:.2f} s")
    order = {k: i for i, k in enumerate(selected)}
    found.sort(key=lambda f: (order[f[0]["key"]], HEADS.index(f[0]["head"]), VIEW_ORDER.index(f[0]["view"])))
    how = {"seed": seed, "fractions": o["fractions"], "split_file": None if split_file is None else str(split_file)}
    return {
        "settings": {
            "task": task,
            "classes": t.classes,
            "relations": list(t.relations),
            "keys": selected,
            "heads": o["heads"],
            "lrs": o["lrs"],
            "wds": o["wds"],
            "alphas": o["alphas"],
            "cs": o["cs"],
            "epochs": epochs,
            "batch_size": batch_size,
            "seed": seed,
            "fractions": o["fractions"],
            "split_file": how["split_file"],
            "device": str(run_device),
            "world_size": ranks.world_size,
            "rows": {k: len(v) for k, v in rows.items()},
        },
        "results": [r for r, _ in found],
        "sweep": [row for _, rows_ in found for row in rows_],
        "skipped": skipped,
        "split": split_record(t, rows, len(ds), **how),
    }


def ridge_params(dim: int, t: TaskData) -> int:
    """Parameters of one ridge head: one (dim + 1)-wide output per class (one per relation for ``binary``)."""
    k = len(t.relations) if t.binary else (1 if len(t.classes) == 2 else len(t.classes))
    return (dim + 1) * k


def _select(store: FeatureStore, keys) -> list[str]:
    """The store's keys matching any of the glob patterns ``keys`` (a string or a list)."""
    patterns = [keys] if isinstance(keys, str) else list(keys)
    selected = [k for k in store.keys() if any(fnmatch.fnmatchcase(k, p) for p in patterns)]
    if not selected:
        raise ValueError(f"no feature set of {store.root} matches {patterns}; it has {', '.join(store.keys()[:12])}")
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
        dim = view_dim(fs.row_shape, view)
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
