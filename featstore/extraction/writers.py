"""The store side of a run: a writer per feature set (resumed, with the rows ranks committed folded
in), and the ``.pt`` exports once the sets are complete."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..errors import ExtractionError, WriterBusyError, WriterConflictError
from ..store import FeatureStore
from ..store.shards import fold_progress
from .encode import row_shapes
from .plan import Plan


def take_sets(
    store: FeatureStore, plan: Plan, active: dict, n_rows: int, store_dtype: str, create_new: bool
) -> dict[str, Any]:
    """Open a writer (holding the set's lock) of every active set that exists, and with ``create_new``
    create the missing ones too (row shapes from one forward pass of the first image); fold into the
    manifest the rows that ranks of an earlier distributed run committed (featstore.store.shards)."""

    writers: dict[str, Any] = {}
    try:
        shapes = {key: store.info(key).row_shape for key in active.values() if key in store}
        if create_new and len(shapes) < len(active):
            shapes.update(row_shapes(plan, active, store_dtype))
        for lp, key in active.items():
            if key in shapes:
                fold_progress(open_writer(store, plan, lp, key, n_rows, shapes[key], store_dtype, writers))
    except BaseException:
        for w in writers.values():
            w.close()
        raise
    return writers


def open_writer(store: FeatureStore, plan: Plan, lp, key: str, n_rows: int, row_shape, store_dtype: str, writers: dict):
    try:
        writer = store.create_feature_set(
            key, n_rows, row_shape, store_dtype, plan.metadata[lp], plan.labels, resume=True
        )
    except WriterBusyError:
        raise  # another run is writing it: --overwrite would not help
    except WriterConflictError as exc:
        raise ExtractionError(f"{exc}; pass --overwrite (overwrite=True) to write it anew") from None
    writers[key] = writer
    return writer


def write_exports(store: FeatureStore, plan: Plan, export_pt: bool) -> list[Path]:
    if not export_pt:
        return []
    out = []
    for key in plan.keys.values():
        fs = store[key]
        target = fs.path.with_suffix(".pt")
        if not target.exists() or target.stat().st_mtime < fs.path.stat().st_mtime:
            fs.export_pt()
        out.append(target)
    return out
