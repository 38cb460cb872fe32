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
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

from . import format as fmt
from ._dtypes import TORCH_DTYPES, dtype_name
from .encoders import Encoder, build_encoder, pool
from .errors import ExtractionError, WriterBusyError, WriterConflictError

DEFAULT_COMMIT_EVERY = 8

__all__ = ["ExtractResult", "ExtractionError", "Plan", "extract", "feature_keys", "plan_extraction"]


@dataclass
class ExtractResult:
    """What :func:`extract` did: the feature sets it wrote (or found complete), rows and images."""

    store: Path
    keys: list[str]
    rows: int
    images: int
    images_encoded: int = 0
    seconds: float = 0.0
    already_complete: bool = False
    exports: list[Path] = field(default_factory=list)

    def summary(self) -> str:
        """One line for the command line."""
        if self.already_complete:
            return (f"{self.store}: {len(self.keys)} feature set(s) already complete with these settings; nothing to do "
                    f"({', '.join(self.keys)})")
        rate = self.images_encoded / self.seconds if self.seconds else 0.0
        return (f"{self.store}: wrote {len(self.keys)} feature set(s) of {self.rows} rows "
                f"({self.images_encoded} of {self.images} distinct images encoded in {self.seconds:.1f} s, {rate:.1f} images/s): "
                f"{', '.join(self.keys)}")


@dataclass(frozen=True)
class Plan:
    """Everything decided before the first image is read."""

    encoder: Encoder
    layers: list[str]
    poolings: list[str]
    keys: dict[tuple[str, str], str]
    paths: list[Path]               # distinct images, in order of first appearance
    rows_of: list[np.ndarray]       # rows of the dataset showing distinct image j
    first_row: list[int]            # the first row of image j (named in errors)
    labels: np.ndarray | None
    metadata: dict[tuple[str, str], dict[str, Any]]


# ---- planning: every check before any work -------------------------------------------------
def _load_dataset(dataset, split: str | None):
    import datasets

    from .spatial import load_from_disk, quiet_datasets

    if isinstance(dataset, (str, os.PathLike)):
        with quiet_datasets():
            dataset = load_from_disk(dataset)
    if isinstance(dataset, datasets.DatasetDict):
        if split is None:
            raise ExtractionError(f"the dataset has the splits {list(dataset)}; choose one with --split (split=...)")
        if split not in dataset:
            raise ExtractionError(f"the dataset has no split {split!r}; it has {list(dataset)}")
        dataset = dataset[split]
    elif split is not None:
        raise ExtractionError(f"split={split!r} given, but the dataset has no splits")
    if not isinstance(dataset, datasets.Dataset):
        raise ExtractionError(f"dataset must be a folder written by save_to_disk or a datasets.Dataset, got {type(dataset).__name__}")
    return dataset


def _labels(ds, target: str | None) -> tuple[np.ndarray | None, dict[str, Any]]:
    if target is None:
        return None, {}
    from .spatial_join import row_targets

    missing = [c for c in ("spatial_relation", "label") if c not in ds.column_names]
    if missing:
        raise ExtractionError(f"the dataset has no column(s) {missing} for the labels (target={target!r}); "
                              f"it has {ds.column_names}. Pass --no-labels (target=None) to extract without labels")
    targets = row_targets(ds)
    return targets.labels(target), targets.metadata(target)


def _distinct_images(ds) -> tuple[list[Path], list[np.ndarray], list[int]]:
    from .spatial import image_paths

    if "image_path" not in ds.column_names:
        raise ExtractionError(f"the dataset has no column 'image_path' (it has {ds.column_names}); "
                              "a spatial dataset names each row's image file there")
    paths = image_paths(ds)
    index: dict[Path, int] = {}
    rows: list[list[int]] = []
    for i, p in enumerate(paths):
        j = index.setdefault(p, len(index))
        if j == len(rows):
            rows.append([])
        rows[j].append(i)
    distinct = list(index)
    for j, p in enumerate(distinct):
        if not p.is_file():
            raise ExtractionError(f"row {rows[j][0]}: image file {p} does not exist; restore it or fix the row's "
                                  "image_path (`featstore dataset validate` lists every bad row)")
    return distinct, [np.asarray(r, dtype=np.int64) for r in rows], [r[0] for r in rows]


def feature_keys(name: str, layers: Sequence[str], poolings: Sequence[str]) -> dict[tuple[str, str], str]:
    """The feature-set key of every (layer, pooling): ``name/layer``, or ``name/layer/pooling`` when
    several poolings are stored."""
    return {(layer, p): f"{name}/{layer}" if len(poolings) == 1 else f"{name}/{layer}/{p}"
            for layer in layers for p in poolings}


def plan_extraction(dataset, encoder: str, model: str, layers="last", pooling="cls", name: str | None = None,
                    split: str | None = None, target: str | None = "label", device: str = "cpu",
                    dtype: str = "float32") -> Plan:
    """Check every input and decide what to write, before any image is read: the dataset and its
    columns, every image file, the encoder, its layers and poolings. Raises a clear error otherwise."""
    ds = _load_dataset(dataset, split)
    paths, rows_of, first_row = _distinct_images(ds)
    labels, label_meta = _labels(ds, target)
    enc = build_encoder(encoder, model, device=device, dtype=dtype)
    layer_names = enc.resolve_layers(layers)
    poolings = enc.resolve_poolings(pooling)
    name = name or enc.name
    keys = feature_keys(name, layer_names, poolings)
    for key in keys.values():
        fmt.check_key(key)
    prov = enc.provenance()
    metadata = {(layer, p): {**prov, "layer": layer, "pooling": p, "rows": len(ds), "images": len(paths), **label_meta}
                for (layer, p) in keys}
    return Plan(enc, layer_names, poolings, keys, paths, rows_of, first_row, labels, metadata)


# ---- the store side ----------------------------------------------------------------------------
_PROVENANCE_FIELDS = ("encoder", "model", "revision", "weights_sha256", "dtype", "preprocessing", "layer", "pooling",
                      "rows", "spatial_targets")


def _differences(stored: dict[str, Any], wanted: dict[str, Any]) -> list[str]:
    fields = [f for f in _PROVENANCE_FIELDS if stored.get(f) != wanted.get(f)]
    fields += [f for f in sorted(set(stored) | set(wanted)) if f not in _PROVENANCE_FIELDS and stored.get(f) != wanted.get(f)]
    return fields


def _check_existing(store, plan: Plan, n_rows: int, store_dtype: str, overwrite: bool) -> None:
    """Refuse (or, with ``overwrite``, remove) existing sets written with other settings."""
    for lp, key in plan.keys.items():
        if key not in store:
            continue
        record = store.info(key)
        diff = _differences(record.metadata, plan.metadata[lp])
        if record.dtype != store_dtype:
            diff.append("store dtype")
        if record.n_rows != n_rows:
            diff.append("number of rows")
        if not diff:
            continue
        if not overwrite:
            raise ExtractionError(
                f"feature set {key!r} in {store.root} was written with other settings (different {', '.join(diff)}); "
                "pass --overwrite (overwrite=True) to replace it, or write to another --out or --name")
        store.delete(key)


# ---- reading images in workers -----------------------------------------------------------------
class _Images(torch.utils.data.Dataset):
    """Distinct image ``j`` -> (j, PIL image); decoded in DataLoader workers."""

    def __init__(self, paths: list[Path], first_row: list[int]):
        self.paths = paths
        self.first_row = first_row

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, j: int):
        from PIL import Image

        try:
            with Image.open(self.paths[j]) as im:
                return j, im.convert("RGB")
        except Exception as exc:
            raise ExtractionError(f"row {self.first_row[j]}: cannot read image {self.paths[j]} ({exc}); "
                                  "replace the file or remove the row") from None


class _Collate:
    """A batch of (j, image) -> (indices, model inputs); the encoder's preprocessing runs in the worker."""

    def __init__(self, encoder: Encoder):
        self.encoder = encoder

    def __call__(self, items):
        idx = [j for j, _ in items]
        return idx, self.encoder.preprocess([im for _, im in items])


# ---- the run ---------------------------------------------------------------------------------------
def _batches_to_do(plan: Plan, keys, store, n_rows: int, batch_size: int) -> list[list[int]]:
    """Batches of distinct images (always the same fixed chunks) with a row not committed in ``keys``."""
    missing = np.zeros(n_rows, dtype=bool)
    for key in keys:
        if key in store:
            for a, b in fmt.gaps(store.info(key).committed, n_rows):
                missing[a:b] = True
        else:
            missing[:] = True
    todo = []
    for start in range(0, len(plan.paths), batch_size):
        batch = list(range(start, min(start + batch_size, len(plan.paths))))
        if any(missing[plan.rows_of[j]].any() for j in batch):
            todo.append(batch)
    return todo


def _runs(rows: np.ndarray) -> list[tuple[int, int]]:
    """Sorted rows -> contiguous [start, end) runs."""
    if not len(rows):
        return []
    breaks = np.flatnonzero(np.diff(rows) != 1) + 1
    return [(int(s[0]), int(s[-1]) + 1) for s in np.split(rows, breaks)]


def extract(dataset, encoder: str, model: str, out: str | os.PathLike = "datasets/features", layers="last",
            pooling="cls", name: str | None = None, split: str | None = None, target: str | None = "label",
            batch_size: int = 32, device: str = "cpu", dtype: str = "float32", store_dtype: str = "float16",
            num_workers: int = 2, overwrite: bool = False, export_pt: bool = True, progress: bool = True,
            commit_every: int = DEFAULT_COMMIT_EVERY) -> ExtractResult:
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
    (featstore.extraction_ranks). ``device="cuda"`` then means each rank's own GPU (``LOCAL_RANK``).
    """
    from .distributed import ensure_process_group, local_device, on_main
    from .store import FeatureStore

    if batch_size < 1 or commit_every < 1 or num_workers < 0:
        raise ValueError("batch_size and commit_every must be >= 1, num_workers >= 0")
    store_dtype = dtype_name(store_dtype)
    ranks = ensure_process_group(device)
    if ranks.distributed:
        device = str(local_device(device))
    plan = plan_extraction(dataset, encoder, model, layers, pooling, name, split, target, device, dtype)
    n_rows = int(sum(len(r) for r in plan.rows_of))

    def prepare_store():
        _check_existing(FeatureStore.create(out), plan, n_rows, store_dtype, overwrite)

    on_main(ranks, prepare_store)  # rank 0 creates the store and removes sets to overwrite; then all read it
    store = FeatureStore.open(out)
    result = ExtractResult(store.root, list(plan.keys.values()), n_rows, len(plan.paths))
    active = {lp: key for lp, key in plan.keys.items() if key not in store or not store.info(key).complete}
    if not active:
        result.already_complete = True
        result.exports = _exports(store, plan, export_pt) if ranks.is_main else []
        return result
    plan.encoder.processor  # load once here, so workers inherit it instead of each loading it
    if ranks.distributed:
        from .extraction_ranks import extract_ranks

        extract_ranks(store, plan, active, n_rows, store_dtype, batch_size, num_workers, commit_every, progress,
                      ranks, result)
    else:
        _extract_here(store, plan, active, n_rows, store_dtype, batch_size, num_workers, commit_every, progress, result)
    if ranks.is_main:
        result.exports = _exports(FeatureStore.open(store.root), plan, export_pt)
    return result


def _extract_here(store, plan: Plan, active: dict, n_rows: int, store_dtype: str, batch_size: int, num_workers: int,
                  commit_every: int, progress: bool, result: ExtractResult) -> None:
    """The single-process run: open (resume) every set, encode the batches with uncommitted rows, commit
    every ``commit_every`` batches, finish every set."""
    writers = take_sets(store, plan, active, n_rows, store_dtype, create_new=False)
    bar = None
    try:
        todo = _batches_to_do(plan, active.values(), store.refresh(), n_rows, batch_size)
        if todo:
            plan.encoder.model  # load the weights before the clock starts: result.seconds is the extraction itself
        start = time.perf_counter()
        bar = _progress(sum(len(b) for b in todo), progress)

        def writer_for(lp, key, row_shape):
            return writers.get(key) or _open_writer(store, plan, lp, key, n_rows, row_shape, store_dtype, writers)

        def after_batch(done: int, images: int) -> None:
            result.images_encoded += images
            bar.update(images)
            if done % commit_every == 0:
                for w in writers.values():
                    w.commit()

        encode_batches(plan, todo, active, store_dtype, num_workers, writer_for, after_batch)
        for w in writers.values():
            w.finish()
        result.seconds = time.perf_counter() - start
    except BaseException:
        # Ctrl-C, an unreadable image, ...: rows already written are whole and correct, so keep them;
        # a rerun continues from here. A failure while committing must not hide the original error.
        for w in writers.values():
            try:
                w.commit()
            except Exception:
                pass
        raise
    finally:
        for w in writers.values():
            w.close()
        if bar is not None:
            bar.close()


def encode_batches(plan: Plan, todo: list[list[int]], active: dict, store_dtype: str, num_workers: int,
                   writer_for, after_batch) -> None:
    """Encode each batch of distinct images in ``todo`` (decoded in DataLoader workers) and write every
    (layer, pooling)'s rows that its writer, ``writer_for(lp, key, row_shape)``, has not committed;
    ``after_batch(batches_done, images)`` after each batch."""
    if not todo:
        return
    loader = torch.utils.data.DataLoader(
        _Images(plan.paths, plan.first_row), batch_sampler=todo, num_workers=num_workers,
        collate_fn=_Collate(plan.encoder), persistent_workers=False,
        prefetch_factor=2 if num_workers else None)
    for done, (idx, inputs) in enumerate(loader, 1):
        tokens = plan.encoder.forward(inputs, plan.layers)
        rows, where = _batch_rows(plan, idx)
        for (layer, p), key in active.items():
            feats = pool(tokens[layer], p).to("cpu", dtype=TORCH_DTYPES[store_dtype])
            writer = writer_for((layer, p), key, tuple(feats.shape[1:]))
            for a, b in _runs(_uncommitted(writer, rows)):
                first = int(np.searchsorted(rows, a))  # rows a..b-1 are consecutive entries of the sorted rows
                writer.write(a, feats[torch.from_numpy(where[first:first + b - a])].contiguous())
        after_batch(done, len(idx))


def take_sets(store, plan: Plan, active: dict, n_rows: int, store_dtype: str, create_new: bool) -> dict[str, Any]:
    """Open a writer (holding the set's lock) of every active set that exists, and with ``create_new``
    create the missing ones too (row shapes from one forward pass of the first image); fold into the
    manifest the rows that ranks of an earlier distributed run committed (featstore.shards)."""
    from .shards import fold_progress

    writers: dict[str, Any] = {}
    try:
        shapes = {key: store.info(key).row_shape for key in active.values() if key in store}
        if create_new and len(shapes) < len(active):
            shapes.update(_row_shapes(plan, active, store_dtype))
        for lp, key in active.items():
            if key in shapes:
                fold_progress(_open_writer(store, plan, lp, key, n_rows, shapes[key], store_dtype, writers))
    except BaseException:
        for w in writers.values():
            w.close()
        raise
    return writers


def _row_shapes(plan: Plan, active: dict, store_dtype: str) -> dict[str, tuple[int, ...]]:
    """The row shape of every active set, from one forward pass of the first image."""
    _, inputs = _Collate(plan.encoder)([_Images(plan.paths, plan.first_row)[0]])
    tokens = plan.encoder.forward(inputs, plan.layers)
    return {key: tuple(pool(tokens[layer], p).shape[1:]) for (layer, p), key in active.items()}


def _open_writer(store, plan: Plan, lp, key: str, n_rows: int, row_shape, store_dtype: str, writers: dict):
    try:
        writer = store.create_feature_set(key, n_rows, row_shape, store_dtype, plan.metadata[lp],
                                          plan.labels, resume=True)
    except WriterBusyError:
        raise  # another run is writing it: --overwrite would not help
    except WriterConflictError as exc:
        raise ExtractionError(f"{exc}; pass --overwrite (overwrite=True) to write it anew") from None
    writers[key] = writer
    return writer


def _batch_rows(plan: Plan, idx: list[int]) -> tuple[np.ndarray, np.ndarray]:
    """The dataset rows of a batch of distinct images (sorted), and for each the image's position in
    the batch: sized by the batch, not by the dataset."""
    parts = [plan.rows_of[j] for j in idx]
    rows = np.concatenate(parts)
    where = np.repeat(np.arange(len(idx), dtype=np.int64), [len(r) for r in parts])
    order = np.argsort(rows, kind="stable")
    return rows[order], where[order]


def _uncommitted(writer, rows: np.ndarray) -> np.ndarray:
    keep = np.ones(len(rows), dtype=bool)
    for a, b in writer.committed_ranges:
        keep &= ~((rows >= a) & (rows < b))
    return rows[keep]


def _exports(store, plan: Plan, export_pt: bool) -> list[Path]:
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


def _progress(total: int, enabled: bool):
    from tqdm.auto import tqdm

    return tqdm(total=total, unit="img", desc="extract", disable=not enabled, file=sys.stderr, smoothing=0.1)
