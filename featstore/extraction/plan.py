"""Planning an extraction: every input checked and every decision made before the first image is
read (dataset, columns, image files, encoder, layers, poolings, keys, provenance), and what an
existing store still needs."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from ..encoders import Encoder, build_encoder
from ..errors import ExtractionError
from ..spatial import image_paths, load_dataset, row_targets
from ..store import FeatureStore
from ..store.format import check_key, gaps
from ..store.quant import stored_as


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
            return (
                f"{self.store}: {len(self.keys)} feature set(s) already complete with these settings; nothing to do "
                f"({', '.join(self.keys)})"
            )
        rate = self.images_encoded / self.seconds if self.seconds else 0.0
        return (
            f"{self.store}: wrote {len(self.keys)} feature set(s) of {self.rows} rows "
            f"({self.images_encoded} of {self.images} distinct images encoded in {self.seconds:.1f} s, {rate:.1f} images/s): "
            f"{', '.join(self.keys)}"
        )


@dataclass(frozen=True)
class Plan:
    """Everything decided before the first image is read."""

    encoder: Encoder
    layers: list[str]
    poolings: list[str]
    keys: dict[tuple[str, str], str]
    paths: list[Path]  # distinct images, in order of first appearance
    rows_of: list[np.ndarray]  # rows of the dataset showing distinct image j
    first_row: list[int]  # the first row of image j (named in errors)
    labels: np.ndarray | None
    metadata: dict[tuple[str, str], dict[str, Any]]


# ---- planning: every check before any work -------------------------------------------------
def _labels(ds, target: str | None) -> tuple[np.ndarray | None, dict[str, Any]]:
    if target is None:
        return None, {}

    missing = [c for c in ("spatial_relation", "label") if c not in ds.column_names]
    if missing:
        raise ExtractionError(
            f"the dataset has no column(s) {missing} for the labels (target={target!r}); "
            f"it has {ds.column_names}. Pass --no-labels (target=None) to extract without labels"
        )
    targets = row_targets(ds)
    return targets.labels(target), targets.metadata(target)


def _distinct_images(ds) -> tuple[list[Path], list[np.ndarray], list[int]]:

    if "image_path" not in ds.column_names:
        raise ExtractionError(
            f"the dataset has no column 'image_path' (it has {ds.column_names}); "
            "a spatial dataset names each row's image file there"
        )
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
            raise ExtractionError(
                f"row {rows[j][0]}: image file {p} does not exist; restore it or fix the row's "
                "image_path (`featstore dataset validate` lists every bad row)"
            )
    return distinct, [np.asarray(r, dtype=np.int64) for r in rows], [r[0] for r in rows]


def feature_keys(name: str, layers: Sequence[str], poolings: Sequence[str]) -> dict[tuple[str, str], str]:
    """The feature-set key of every (layer, pooling): ``name/layer``, or ``name/layer/pooling`` when
    several poolings are stored."""
    return {
        (layer, p): f"{name}/{layer}" if len(poolings) == 1 else f"{name}/{layer}/{p}"
        for layer in layers
        for p in poolings
    }


def plan_extraction(
    dataset,
    encoder: str,
    model: str,
    layers="last",
    pooling="cls",
    name: str | None = None,
    split: str | None = None,
    target: str | None = "label",
    device: str = "cpu",
    dtype: str = "float32",
) -> Plan:
    """Check every input and decide what to write, before any image is read: the dataset and its
    columns, every image file, the encoder, its layers and poolings. Raises a clear error otherwise."""
    ds = load_dataset(dataset, split, error=ExtractionError)
    paths, rows_of, first_row = _distinct_images(ds)
    labels, label_meta = _labels(ds, target)
    enc = build_encoder(encoder, model, device=device, dtype=dtype)
    layer_names = enc.resolve_layers(layers)
    poolings = enc.resolve_poolings(pooling)
    name = name or enc.name
    keys = feature_keys(name, layer_names, poolings)
    for key in keys.values():
        check_key(key)
    prov = enc.provenance()
    metadata = {
        (layer, p): {**prov, "layer": layer, "pooling": p, "rows": len(ds), "images": len(paths), **label_meta}
        for (layer, p) in keys
    }
    return Plan(enc, layer_names, poolings, keys, paths, rows_of, first_row, labels, metadata)


# ---- the store side ----------------------------------------------------------------------------
_PROVENANCE_FIELDS = (
    "encoder",
    "model",
    "revision",
    "weights_sha256",
    "dtype",
    "preprocessing",
    "layer",
    "pooling",
    "rows",
    "spatial_targets",
)


def _differences(stored: dict[str, Any], wanted: dict[str, Any]) -> list[str]:
    fields = [f for f in _PROVENANCE_FIELDS if stored.get(f) != wanted.get(f)]
    fields += [
        f for f in sorted(set(stored) | set(wanted)) if f not in _PROVENANCE_FIELDS and stored.get(f) != wanted.get(f)
    ]
    return fields


def check_existing(store: FeatureStore, plan: Plan, n_rows: int, store_dtype: str, overwrite: bool) -> None:
    """Refuse (or, with ``overwrite``, remove) existing sets written with other settings."""
    for lp, key in plan.keys.items():
        if key not in store:
            continue
        if key in store.problems:
            if not overwrite:
                raise ExtractionError(
                    f"feature set {key!r} in {store.root} is broken ({store.problems[key]}); pass --overwrite "
                    f"(overwrite=True) to write it anew, or remove it with `featstore delete {store.root} {key}`"
                )
            store.delete(key)
            continue
        record = store.info(key)
        diff = _differences(record.metadata, plan.metadata[lp])
        scheme = stored_as(store_dtype)[1]
        if (record.quant and record.quant.scheme) != scheme or (scheme is None and record.dtype != store_dtype):
            diff.append("store dtype")
        if record.n_rows != n_rows:
            diff.append("number of rows")
        if not diff:
            continue
        if not overwrite:
            raise ExtractionError(
                f"feature set {key!r} in {store.root} was written with other settings (different {', '.join(diff)}); "
                "pass --overwrite (overwrite=True) to replace it, or write to another --out or --name"
            )
        store.delete(key)


# ---- the run ---------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Job:
    """One run of an extraction: the store, the plan, the sets still to write and how to write them."""

    store: FeatureStore
    plan: Plan
    active: dict[tuple[str, str], str]  # (layer, pooling) -> key, for the sets not complete yet
    n_rows: int
    store_dtype: str
    batch_size: int
    num_workers: int
    commit_every: int
    progress: bool

    def refreshed(self) -> Job:
        """The same job over the store's manifest as it is on disk now."""
        return replace(self, store=self.store.refresh())


def batches_to_do(job: Job) -> list[list[int]]:
    """Batches of distinct images (always the same fixed chunks) with a row that an active set has not
    committed, as ``job.store`` says."""
    missing = np.zeros(job.n_rows, dtype=bool)
    for key in job.active.values():
        if key in job.store:
            for a, b in gaps(job.store.info(key).committed, job.n_rows):
                missing[a:b] = True
        else:
            missing[:] = True
    todo = []
    paths = job.plan.paths
    for start in range(0, len(paths), job.batch_size):
        batch = list(range(start, min(start + job.batch_size, len(paths))))
        if any(missing[job.plan.rows_of[j]].any() for j in batch):
            todo.append(batch)
    return todo
