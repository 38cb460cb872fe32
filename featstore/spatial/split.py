"""A deterministic train/validation/test split of a spatial dataset by image.

Rows that share an image (the same ``image_path`` after normalisation) always land in the same
split, so a probe is never tested on an image it was trained on. The images, sorted by path, are
permuted with a seeded generator and cut by the fractions: the same dataset and seed give the same
split on any machine, whatever the row order.
"""

from __future__ import annotations

import os

import numpy as np

from .io import quiet_datasets
from .schema import ROW_INDEX_COLUMN, check_is_dataset, column_values

SPLITS: tuple[str, ...] = ("train", "validation", "test")


def _check_fractions(fractions) -> tuple[float, float, float]:
    try:
        fr = tuple(float(f) for f in fractions)
    except (TypeError, ValueError):
        raise ValueError(f"fractions must be three numbers (train, validation, test), got {fractions!r}") from None
    if len(fr) != 3 or any(not np.isfinite(f) or f < 0 for f in fr) or abs(sum(fr) - 1.0) > 1e-6:
        raise ValueError(
            f"fractions must be three non-negative numbers (train, validation, test) summing to 1, got {fractions!r}"
        )
    return fr


def image_counts(n_images: int, fractions: tuple[float, float, float]) -> list[int]:
    """Images per split: rounded shares, each non-zero fraction getting at least one image when possible."""
    positive = sum(f > 0 for f in fractions)
    rest = [round(f * n_images) for f in fractions[1:]]
    if n_images >= positive:
        rest = [max(c, 1) if f > 0 else c for c, f in zip(rest, fractions[1:])]
    need_train = 1 if fractions[0] > 0 and n_images >= positive else 0
    while n_images - sum(rest) < need_train:
        rest[int(np.argmax(rest))] -= 1
    return [n_images - sum(rest)] + rest


def split_indices(ds, seed: int = 0, fractions=(0.8, 0.1, 0.1)) -> dict[str, np.ndarray]:
    """Row indices of ``ds`` per split (``train``, ``validation``, ``test``), grouped by image.

    Each array is sorted; together they cover every row once. Use them with a feature set extracted
    from ``ds`` (row i of the set is row i of ``ds``): ``fs.batches(256, rows=idx['train'])``.
    """

    check_is_dataset(ds)
    fractions = _check_fractions(fractions)
    keys = [
        os.path.normpath(p) if isinstance(p, str) else f"<row {i}: {p!r}>"
        for i, p in enumerate(column_values(ds, "image_path"))
    ]
    unique, inverse = np.unique(np.array(keys, dtype=object), return_inverse=True)
    order = np.random.default_rng(np.random.SeedSequence([int(seed), 0x5B117])).permutation(len(unique))
    counts = image_counts(len(unique), fractions)
    split_of_image = np.empty(len(unique), dtype=np.int64)
    start = 0
    for s, c in enumerate(counts):
        split_of_image[order[start : start + c]] = s
        start += c
    split_of_row = split_of_image[np.asarray(inverse, dtype=np.int64).reshape(-1)]
    return {name: np.flatnonzero(split_of_row == s).astype(np.int64) for s, name in enumerate(SPLITS)}


def split(ds, seed: int = 0, fractions=(0.8, 0.1, 0.1)):
    """``ds`` split by image into a ``DatasetDict`` with ``train``, ``validation`` and ``test``.

    Each split gets a ``row_index`` column: the row's position in ``ds``, which is its row in every
    feature set extracted from ``ds`` (kept as is when ``ds`` already has one, e.g. a split of a split).
    """
    import datasets

    idx = split_indices(ds, seed, fractions)
    with quiet_datasets():
        base = (
            ds
            if ROW_INDEX_COLUMN in ds.column_names
            else ds.add_column(ROW_INDEX_COLUMN, np.arange(len(ds), dtype=np.int64))
        )
        return datasets.DatasetDict({name: base.select(rows) for name, rows in idx.items()})
