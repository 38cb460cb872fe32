"""Turn a numpy-style first-axis index (int, list, array, tensor, boolean mask) into int64 row numbers."""

from __future__ import annotations

import operator

import numpy as np
import torch


def normalize_rows(index, n_rows: int) -> tuple[np.ndarray, tuple[int, ...]]:
    """Row numbers as a C-contiguous int64 array, plus the leading shape of the result.

    Follows numpy: negative numbers count from the end, a boolean mask must have length ``n_rows``,
    an n-d integer array gives an n-d leading shape, an int gives no leading dimension.
    Raises IndexError (naming the offending value) for anything out of range or not an index.
    """
    if isinstance(index, torch.Tensor):
        index = index.detach().cpu().numpy()
    elif not isinstance(index, np.ndarray):
        if isinstance(index, (bool, np.bool_)):
            raise IndexError("a single boolean is not a row index; use a boolean mask with one entry per row")
        try:
            scalar = operator.index(index)
        except TypeError:
            scalar = None
        if scalar is not None:
            if not -n_rows <= scalar < n_rows:
                raise IndexError(f"index {scalar} is out of bounds for axis 0 with size {n_rows}")
            return np.array([scalar % n_rows if n_rows else scalar], dtype=np.int64), ()
        if isinstance(index, (list, tuple, range)):
            index = np.asarray(index) if len(index) else np.empty(0, dtype=np.int64)
        else:
            raise IndexError(
                f"only integers, slices, integer or boolean arrays and tensors are valid row indices, got {type(index).__name__}"
            )

    if index.dtype == np.bool_:
        if index.shape != (n_rows,):
            raise IndexError(f"boolean index has shape {index.shape} but there are {n_rows} rows")
        return np.flatnonzero(index).astype(np.int64, copy=False), (int(index.sum()),)
    if index.dtype.kind not in "iu":
        raise IndexError(f"arrays used as row indices must be of integer or boolean type, got {index.dtype}")
    shape = index.shape
    rows = np.ascontiguousarray(index.reshape(-1), dtype=np.int64)
    if rows.size:
        lo, hi = int(rows.min()), int(rows.max())
        if lo < -n_rows or hi >= n_rows:
            bad = lo if lo < -n_rows else hi
            raise IndexError(f"index {bad} is out of bounds for axis 0 with size {n_rows}")
        if lo < 0:
            rows = np.where(rows < 0, rows + n_rows, rows)
    return rows, shape
