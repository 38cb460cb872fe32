"""Joining a spatial dataset and a feature set: row i of a feature set is row i of its dataset.

Two directions:

- :func:`with_features` serves a feature set as the dataset's ``features`` column (the seed's
  ``sample["features"]``) through ``Dataset.with_transform``: rows are gathered from the memory-mapped
  store when accessed, so nothing large is copied into Arrow.
- :func:`row_targets` turns the dataset's rows into the integer arrays a feature set stores as its
  labels (``store.create_feature_set(..., labels=...)``), plus metadata that says what they mean.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from ..store import FeatureSet, FeatureStore
from .io import quiet_datasets
from .schema import ROW_INDEX_COLUMN, DatasetAlignmentError, Problem, check_is_dataset, column_values, dataset_relations
from .validate import validate

TARGETS: tuple[str, ...] = ("label", "relation")
METADATA_KEY = "spatial_targets"


@dataclass(frozen=True)
class RowTargets:
    """Per-row targets of a spatial dataset, as int64 arrays aligned with its rows.

    ``label``: the schema's 0/1 label. ``relation``: the index of ``spatial_relation`` in
    ``relations`` (``left``=0, ``right``=1, ``top``=2, ``bottom``=3, then any extra relations).
    """

    label: np.ndarray
    relation: np.ndarray
    relations: tuple[str, ...]
    dataset_fingerprint: str | None = None

    def labels(self, target: str = "label") -> np.ndarray:
        """The array for ``target`` ('label' or 'relation'), ready for ``create_feature_set(labels=...)``."""
        if target not in TARGETS:
            raise ValueError(f"target must be one of {TARGETS}, got {target!r}")
        return self.label if target == "label" else self.relation

    def metadata(self, target: str = "label") -> dict[str, Any]:
        """``{"spatial_targets": {...}}`` to merge into a feature set's metadata: what its labels mean.
        :func:`with_features` uses it to check that a dataset and a feature set belong together."""
        self.labels(target)
        classes = ["false", "true"] if target == "label" else list(self.relations)
        return {
            METADATA_KEY: {
                "target": target,
                "classes": classes,
                "relations": list(self.relations),
                "rows": len(self.label),
                "dataset_fingerprint": self.dataset_fingerprint,
            }
        }


def row_targets(ds, relations: tuple[str, ...] | None = None) -> RowTargets:
    """Labels and relation codes for every row of ``ds`` (validated first, image files not checked).

    ``relations`` fixes the code order (default: :func:`~featstore.spatial.dataset_relations`).
    """

    validate(ds, check_files=False)
    relations = tuple(relations) if relations is not None else dataset_relations(ds)
    code = {r: i for i, r in enumerate(relations)}
    rels = column_values(ds, "spatial_relation")
    missing = sorted({r for r in rels if r not in code})
    if missing:
        raise ValueError(f"relations {missing} of the dataset are not in relations={relations}")
    return RowTargets(
        label=np.asarray(column_values(ds, "label"), dtype=np.int64),
        relation=np.fromiter((code[r] for r in rels), dtype=np.int64, count=len(rels)),
        relations=relations,
        dataset_fingerprint=getattr(ds, "_fingerprint", None),
    )


class _GatherFeatures:
    """The transform :func:`with_features` installs: adds ``column`` gathered from the feature set.

    Picklable (a FeatureSet pickles as a reference to its file), so DataLoader workers can use it.
    """

    def __init__(self, fs, column: str, index_column: str, dtype: torch.dtype | None):
        self.fs, self.column, self.index_column, self.dtype = fs, column, index_column, dtype

    def __call__(self, batch: dict[str, list]) -> dict[str, Any]:
        rows = np.asarray(batch[self.index_column], dtype=np.int64)
        feats = self.fs[rows]
        out = dict(batch)
        out[self.column] = feats if self.dtype is None else feats.to(self.dtype)
        return out


def _feature_set(features, key: str | None):

    if isinstance(features, FeatureSet):
        if key is not None and key != features.key:
            raise ValueError(f"key={key!r} given with the feature set {features.key!r}; pass one or the other")
        return features
    if isinstance(features, (str, os.PathLike)):
        features = FeatureStore.open(features)
    if isinstance(features, FeatureStore):
        if key is None:
            raise ValueError(
                f"pass key= to choose a feature set of {features.root} (it has {', '.join(features.keys()[:8])})"
            )
        return features[key]
    raise TypeError(
        f"features must be a FeatureSet, a FeatureStore or a store root path, got {type(features).__name__}"
    )


def with_features(
    ds,
    features,
    key: str | None = None,
    column: str = "features",
    dtype: torch.dtype | None = None,
    check_labels: bool = True,
):
    """``ds`` with a ``features`` column served from a feature set, row i -> row i, without copying.

    ``features`` is a FeatureSet, or a FeatureStore (or store root) plus ``key``. The full dataset
    must have as many rows as the set; a split made by :func:`~featstore.spatial.split` (or any dataset
    with a ``row_index`` column) maps each row through ``row_index``. ``sample["features"]`` is a
    tensor of the set's row shape (``dtype`` converts it). If the set's metadata records what its
    labels mean (:meth:`RowTargets.metadata`) they are checked against the dataset's rows.
    The result is formatted by a transform: it is not saved by ``save_to_disk``; apply this again
    after loading.
    """

    check_is_dataset(ds)
    fs = _feature_set(features, key)
    if column in ds.column_names:
        raise ValueError(f"the dataset already has a {column!r} column; remove it or pass another column= name")
    if ROW_INDEX_COLUMN in ds.column_names:
        rows = np.asarray(column_values(ds, ROW_INDEX_COLUMN), dtype=np.int64)
        if len(rows) and (rows.min() < 0 or rows.max() >= len(fs)):
            raise DatasetAlignmentError(
                f"the dataset's {ROW_INDEX_COLUMN} values run from {rows.min()} to {rows.max()} but feature set "
                f"{fs.key!r} has {len(fs)} rows; it was extracted from another dataset"
            )
    else:
        if len(ds) != len(fs):
            raise DatasetAlignmentError(
                f"the dataset has {len(ds)} rows but feature set {fs.key!r} has {len(fs)}; row i of a feature set "
                "is row i of the dataset it was extracted from: pass that dataset, or a split of it made by "
                "featstore.spatial.split (which keeps a row_index column)"
            )
        rows = np.arange(len(ds), dtype=np.int64)
        with quiet_datasets():
            ds = ds.add_column(ROW_INDEX_COLUMN, rows)
    if check_labels:
        _check_labels(ds, fs, rows)
    return ds.with_transform(_GatherFeatures(fs, column, ROW_INDEX_COLUMN, dtype))


def _check_labels(ds, fs, rows: np.ndarray, shown: int = 20) -> None:
    """Compare the set's stored labels with the dataset's, when the set's metadata says what they are."""

    meta = fs.metadata.get(METADATA_KEY) if isinstance(fs.metadata, dict) else None
    if fs.labels is None or not isinstance(meta, dict) or meta.get("target") not in TARGETS:
        return
    relations = tuple(meta.get("relations") or ())
    try:
        expected = row_targets(ds, relations or None).labels(meta["target"])
    except ValueError as exc:
        raise DatasetAlignmentError(f"feature set {fs.key!r} does not match the dataset: {exc}") from None
    stored = fs.labels.numpy()[rows]
    bad = np.flatnonzero(stored != expected)
    if len(bad):
        problems = [
            Problem(
                int(i),
                meta["target"],
                f"feature set {fs.key!r} stores {int(stored[i])}, the dataset gives "
                f"{int(expected[i])} (feature row {int(rows[i])})",
            )
            for i in bad[:shown]
        ]
        raise DatasetAlignmentError(
            f"feature set {fs.key!r} and the dataset disagree on {len(bad)} of {len(rows)} {meta['target']} values; "
            "the set was extracted from a different dataset or row order (pass check_labels=False to skip this check)",
            problems,
        )
