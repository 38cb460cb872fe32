"""Extraction: run a registered encoder over a spatial dataset's images and write one feature set per
(layer, pooling) into a store, with ``.pt`` exports beside them and the dataset's labels.

How it stays fast and safe:

- every distinct image is encoded once (rows sharing an image share its features), in fixed batches
  of distinct images; each batch is one forward pass that yields every requested layer and pooling;
- images are decoded and preprocessed in DataLoader workers while the encoder runs;
- rows are committed every few batches; a killed run, started again with the same arguments,
  recomputes only the batches with uncommitted rows. Batches are always the same images in the same
  order, so the finished store is bit-identical to an uninterrupted run;
- a run whose feature sets are all complete with the same provenance does nothing; a run with a
  different model, weights or preprocessing refuses to touch existing sets unless ``overwrite``.

Keys: ``<name>/<layer>`` with one pooling (the seed's ``dinov2/layer_10``), ``<name>/<layer>/<pooling>``
with several; ``name`` defaults to the encoder's name.
"""

from __future__ import annotations

import os
import time

from .._dtypes import dtype_name
from ..distributed import ensure_process_group, local_device, on_main
from ..errors import ExtractionInterrupted
from ..store import FeatureStore, Manifest
from .encode import encode_batches, progress_bar
from .plan import ExtractResult, Job, batches_to_do, check_existing, plan_extraction
from .ranks import extract_ranks
from .writers import open_writer, take_sets, write_exports

DEFAULT_COMMIT_EVERY = 8


def extract(
    dataset,
    encoder: str,
    model: str,
    out: str | os.PathLike = "datasets/features",
    layers="last",
    pooling="cls",
    name: str | None = None,
    split: str | None = None,
    target: str | None = "label",
    batch_size: int = 32,
    device: str = "cpu",
    dtype: str = "float32",
    store_dtype: str = "float16",
    num_workers: int = 2,
    overwrite: bool = False,
    export_pt: bool = True,
    progress: bool = True,
    commit_every: int = DEFAULT_COMMIT_EVERY,
) -> ExtractResult:
    """Extract features of ``dataset`` (a save_to_disk folder or a ``datasets.Dataset``) with the
    registered ``encoder`` loaded from ``model`` (hub id or local folder) into the store ``out``.

    ``layers``: ``"10,15,23"``, ``"all"`` or ``"last"``; ``pooling``: any of ``cls``, ``mean``, ``patch``
    (comma-separated). Writes one feature set per (layer, pooling), keyed ``<name>/<layer>`` (one pooling)
    or ``<name>/<layer>/<pooling>``, with the dataset's ``target`` labels (``label`` or ``relation``;
    None for none) and a ``.pt`` export beside each. ``dtype`` is the model's compute dtype,
    ``store_dtype`` the stored one. Run again after an interruption, it continues; after it finished,
    it does nothing; with other settings, it refuses unless ``overwrite``.

    Under torchrun (or in an initialised torch.distributed process group) every rank calls it with the
    same arguments; the ranks split the images and write into the same feature sets
    (featstore.extraction.ranks). ``device="cuda"`` then means each rank's own GPU (``LOCAL_RANK``).
    """
    for option, value, least in (
        ("batch_size", batch_size, 1),
        ("commit_every", commit_every, 1),
        ("num_workers", num_workers, 0),
    ):
        if isinstance(value, bool) or not isinstance(value, int) or value < least:
            raise ValueError(f"{option} (--{option.replace('_', '-')}) must be an integer >= {least}, got {value!r}")
    store_dtype = dtype_name(store_dtype)
    ranks = ensure_process_group(device)
    if ranks.distributed:
        device = str(local_device(device))
    plan = plan_extraction(dataset, encoder, model, layers, pooling, name, split, target, device, dtype)
    n_rows = int(sum(len(r) for r in plan.rows_of))

    def prepare_store():
        check_existing(FeatureStore.create(out, strict=False), plan, n_rows, store_dtype, overwrite)

    folder_is_new, store_is_new = not os.path.exists(out), not Manifest(out).exists()
    on_main(ranks, prepare_store)  # rank 0 creates the store and removes sets to overwrite; then all read it
    store = FeatureStore.open(out, strict=False)  # sets of other extractions may be broken: left alone
    result = ExtractResult(store.root, list(plan.keys.values()), n_rows, len(plan.paths))
    active = {lp: key for lp, key in plan.keys.items() if key not in store or not store.info(key).complete}
    if not active:
        result.already_complete = True
        result.exports = write_exports(store, plan, export_pt) if ranks.is_main else []
        return result
    job = Job(store, plan, active, n_rows, store_dtype, batch_size, num_workers, commit_every, progress)
    if ranks.distributed:
        plan.encoder.load(weights=False)  # once here, so DataLoader workers inherit the processor
        extract_ranks(job, ranks, result)
    else:
        try:
            plan.encoder.load(weights=False)
            _extract_here(job, result)
        except BaseException:
            if store_is_new:  # a model that cannot load, an unreadable first image: no empty store left behind
                store.discard_if_empty(remove_folder=folder_is_new)
            raise
    if ranks.is_main:
        result.exports = write_exports(FeatureStore.open(store.root, strict=False), plan, export_pt)
    return result


def _extract_here(job: Job, result: ExtractResult) -> None:
    """The single-process run: open (resume) every set, encode the batches with uncommitted rows, commit
    every ``commit_every`` batches, finish every set."""
    writers = take_sets(job, create_new=False)
    bar = None
    try:
        todo = batches_to_do(job.refreshed())
        if todo:
            job.plan.encoder.load()  # before the clock starts: result.seconds is the extraction itself
        start = time.perf_counter()
        bar = progress_bar(sum(len(b) for b in todo), job.progress)

        def writer_for(lp, key, row_shape):
            return writers.get(key) or open_writer(job, lp, key, row_shape, writers)

        def after_batch(done: int, images: int) -> None:
            result.images_encoded += images
            bar.update(images)
            if done % job.commit_every == 0:
                for w in writers.values():
                    w.commit()

        encode_batches(job, todo, writer_for, after_batch)
        for w in writers.values():
            w.finish()
        result.seconds = time.perf_counter() - start
    except BaseException as exc:
        # Ctrl-C, an unreadable image, ...: rows already written are whole and correct, so keep them;
        # a rerun continues from here. A failure while committing must not hide the original error.
        for w in writers.values():
            try:
                w.commit()
            except Exception:
                pass
        if isinstance(exc, KeyboardInterrupt) and not isinstance(exc, ExtractionInterrupted):
            raise ExtractionInterrupted(interrupted_message(job, writers)) from None
        raise
    finally:
        for w in writers.values():
            w.close()
        if bar is not None:
            bar.close()


def interrupted_message(job: Job, writers: dict) -> str:
    """What an interrupted run kept: the rows committed in the sets it was writing, and how to resume."""
    counts = sorted({w.rows_committed for w in writers.values()}) if len(writers) == len(job.active) else [0]
    rows = f"{counts[0]}" if len(counts) == 1 else f"{counts[0]} to {counts[-1]}"
    return (
        f"{rows} of {job.n_rows} rows are committed in the {len(job.active)} feature set(s) being written to "
        f"{job.store.root}; run the same command again to resume from there"
    )
