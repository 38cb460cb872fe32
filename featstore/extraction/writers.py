"""The store side of a run: a writer per feature set (resumed, with the rows ranks committed folded
in), and the ``.pt`` exports once the sets are complete."""

from __future__ import annotations

from pathlib import Path

from ..errors import ExtractionError, WriterBusyError, WriterConflictError
from ..store import FeatureStore, FeatureWriter
from ..store.checksums import file_crc32
from ..store.quant import stored_as
from ..store.shards import fold_progress
from .encode import row_shapes
from .plan import Job, Plan


def take_sets(job: Job, create_new: bool) -> dict[str, FeatureWriter]:
    """Open a writer (holding the set's lock) of every active set that exists, and with ``create_new``
    create the missing ones too (row shapes from one forward pass of the first image); fold into the
    manifest the rows that ranks of an earlier distributed run committed (featstore.store.shards)."""

    writers: dict[str, FeatureWriter] = {}
    try:
        shapes = {key: job.store.info(key).row_shape for key in job.active.values() if key in job.store}
        if create_new and len(shapes) < len(job.active):
            shapes.update(row_shapes(job))
        for lp, key in job.active.items():
            if key in shapes:
                fold_progress(open_writer(job, lp, key, shapes[key], writers))
    except BaseException:
        for w in writers.values():
            w.close()
        raise
    return writers


def open_writer(
    job: Job, lp: tuple[str, str], key: str, row_shape: tuple[int, ...], writers: dict[str, FeatureWriter]
) -> FeatureWriter:
    """Create or resume the writer of ``key`` (the set of ``lp``) and add it to ``writers``."""
    try:
        dtype, quant = stored_as(job.store_dtype)
        writer = job.store.create_feature_set(
            key, job.n_rows, row_shape, dtype, job.plan.metadata[lp], job.plan.labels, resume=True, quant=quant
        )
    except WriterBusyError:
        raise  # another run is writing it: --overwrite would not help
    except WriterConflictError as exc:
        raise ExtractionError(f"{exc}; pass --overwrite (overwrite=True) to write it anew") from None
    writers[key] = writer
    return writer


def write_exports(store: FeatureStore, plan: Plan, export_pt: bool) -> list[Path]:
    """The ``.pt`` export of every set of the plan, written unless one the manifest's checksum of the
    export matches exists (a changed, damaged or unrecorded export is written again)."""
    if not export_pt:
        return []
    out = []
    for key in plan.keys.values():
        fs = store[key]
        target = fs.path.with_suffix(".pt")
        recorded = (fs.record.export_crc32, fs.record.export_bytes)
        if recorded[0] is None or not target.is_file() or file_crc32(target) != recorded:
            fs.export_pt()
        out.append(target)
    return out
