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

from ..batches import FeatureStore
from ..distributed import ensure_process_group, local_device
from ..spatial import load_dataset
from .heads import view_dim, views
from .logistic import DEFAULT_CS, logistic_probe
from .options import HEADS, check_grids, check_options
from .results import summarise
from .ridge import DEFAULT_ALPHAS, MAX_DIM, ridge_probes
from .sgd import EVAL_BATCH, SGD_HEADS, evaluate_groups, make_groups, train_groups
from .splits import load_split, split_record
from .tasks import TaskData, encoded_labels, make_task, task_rows

DEFAULT_LRS = (1e-3, 3e-3, 1e-2)
DEFAULT_WDS = (0.0, 1e-4)
VIEW_ORDER = ("vector", "flat", "mean", "grid")


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

    ``heads`` is any of ``linear``, ``attentive`` (learned queries over a patch grid) and ``mlp`` (one
    hidden layer), all trained by AdamW over ``lrs`` x ``wds`` sharing each gathered batch, ``ridge``
    (closed form over ``alphas``) and ``logistic`` (L-BFGS over ``cs``): a list or ``"linear,ridge"``. ``split_file`` (a
    ``split.json`` of an earlier run) reuses its rows instead of splitting. Every option is checked
    before any work starts (``ValueError``). Returns ``{"settings", "results", "sweep", "split", "skipped"}``:
    one result per (feature set, head, view) with its best setting on validation and test accuracy, overall
    and per relation, with 95% Wilson intervals; ``split`` is what :func:`write_results` saves as
    ``split.json``. The same seed gives the same numbers on the same machine and device.

    Under torchrun (or in an initialised process group) every rank trains the AdamW heads on its share of
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
        store = FeatureStore.open(store, strict=False)  # a broken set is skipped unless selected
    selected = _select(store, keys, log)
    check_grids(o["heads"], {k: tuple(store[k].row_shape) for k in selected})
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
    wide_heads = [h for h in o["heads"] if h in ("ridge", "logistic", "mlp")]  # none on views wider than MAX_DIM
    skipped = [
        {"key": key, "view": v, "heads": wide_heads, "why": f"wider than {MAX_DIM}"}
        for key in selected
        for v in views(store[key])
        if v not in closed[key] and wide_heads
    ]
    sgd = [h for h in o["heads"] if h in SGD_HEADS]
    for key in selected if sgd else []:
        fs = store[key]
        t0 = time.perf_counter()
        groups = make_groups(fs, sgd, settings, t.n_outputs, MAX_DIM)
        train_groups(fs, groups, t, rows["train"], labels, o["epochs"], o["batch_size"], seed, ranks, run_device)
        val, _ = evaluate_groups(fs, groups, rows["validation"], labels, t, run_device)
        test, test_rel = evaluate_groups(fs, groups, rows["test"], labels, t, run_device)
        grid = [{"lr": lr, "wd": wd} for lr, wd in settings]
        for g, v, te in zip(groups, val, test):
            found.append(summarise(key, fs.metadata, g.kind, g.view, g.dim, g.head_params, grid, v, te, test_rel, t))
        if log:
            kinds = ", ".join(sorted({g.kind for g in groups}))
            log(
                f"{key}: {len(groups) * len(settings)} heads ({kinds}), {o['epochs']} epochs, one gather per batch, "
                f"in {time.perf_counter() - t0:.2f} s"
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
