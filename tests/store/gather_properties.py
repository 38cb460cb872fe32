"""Property tests of the gather against numpy fancy indexing (hypothesis), for any number of cases.

Two properties, drawn alternately:
- core: ``_backend.gather(src, row_bytes, idx, out, threads)`` on random bytes equals
  ``src.reshape(-1, row_bytes)[idx]`` when every index is in [0, n_rows), and otherwise raises
  IndexError without writing to ``out`` (the core does not wrap negatives, by contract);
- feature set: ``fs[index]`` of a stored set equals numpy's ``array[index]`` for integer lists and
  arrays of any dtype (negatives, out-of-range, uint64 beyond int64), boolean masks and slices, and
  raises IndexError exactly when numpy does.
Used by tests/store/test_fuzz.py (a few hundred cases) and benchmarks/reliability/fuzz.py (>= 10^4).
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from featstore import FeatureStore, _backend

N_ROWS = 37
ROW_SHAPE = (3,)
INDEX_DTYPES = ["int8", "int16", "int32", "int64", "uint8", "uint16", "uint32", "uint64"]


def _stored_set(root: Path):
    """A float32 feature set of N_ROWS rows and the numpy array it holds."""
    expected = np.arange(N_ROWS * 3, dtype=np.float32).reshape(N_ROWS, *ROW_SHAPE) * 1.5 - 7
    store = FeatureStore.create(root)
    with store.create_feature_set("p/x", N_ROWS, ROW_SHAPE, "float32") as w:
        w.write(0, torch.from_numpy(expected))
    return FeatureStore.open(root)["p/x"], expected


@st.composite
def _core_case(draw):
    row_bytes = draw(st.integers(1, 48))
    n_rows = draw(st.integers(0, 40))
    extra = draw(st.integers(0, row_bytes - 1))  # a partial row at the end of src is ignored
    src = np.frombuffer(
        draw(st.binary(min_size=n_rows * row_bytes + extra, max_size=n_rows * row_bytes + extra)), dtype=np.uint8
    )
    in_range = st.integers(0, max(n_rows - 1, 0)) if n_rows else st.just(0)
    index = st.one_of(in_range, in_range, in_range, st.integers(-(2**63), 2**63 - 1), st.sampled_from([-1, n_rows]))
    idx = np.array(draw(st.lists(index, max_size=64)), dtype=np.int64)
    threads = draw(st.sampled_from([0, 1, 2, 4]))
    return src, row_bytes, idx, threads


def _as_array(spec):
    """An index array of the drawn dtype; values that the dtype cannot hold wrap like numpy's astype."""
    dtype, values = spec
    return np.array([v % 2**64 for v in values], dtype=np.uint64).astype(dtype)


def _index(n: int):
    """numpy first-axis indices for n rows: lists, typed integer arrays, masks of any length, slices, ints."""
    edges = st.sampled_from([-n - 1, -n, -1, 0, 1, n - 1, n])
    bound = st.integers(-n - 3, n + 3) | edges
    row = st.integers(-n - 3, n + 2) | edges
    return st.one_of(
        st.lists(row, max_size=20),
        st.tuples(st.sampled_from(INDEX_DTYPES), st.lists(row | st.integers(-(2**64), 2**64), max_size=20)).map(
            _as_array
        ),
        st.lists(st.booleans(), min_size=n, max_size=n).map(np.array),
        st.lists(st.booleans(), min_size=0, max_size=n + 2).map(np.array),
        st.tuples(bound | st.none(), bound | st.none(), st.integers(-5, 5).filter(bool) | st.none()).map(
            lambda t: slice(*t)
        ),
        st.integers(-n - 2, n + 1),
    )


def check_core(src: np.ndarray, row_bytes: int, idx: np.ndarray, threads: int) -> None:
    n_rows = len(src) // row_bytes
    out = np.full(len(idx) * row_bytes, 0xA5, dtype=np.uint8)
    valid = bool(((idx >= 0) & (idx < n_rows)).all())
    try:
        _backend.gather(src, row_bytes, idx, out, threads)
    except IndexError:
        assert not valid, f"IndexError for valid indices {idx} into {n_rows} rows"
        assert (out == 0xA5).all(), "out was written before the IndexError"
        return
    assert valid, f"no IndexError for indices {idx} into {n_rows} rows"
    expected = src[: n_rows * row_bytes].reshape(n_rows, row_bytes)[idx].reshape(-1)
    assert np.array_equal(out, expected)


def check_feature_set(fs, expected: np.ndarray, index) -> None:
    try:
        want = expected[index]
    except IndexError:
        want = None
    try:
        got = fs[index]
    except IndexError:
        assert want is None, f"fs[{index!r}] raised IndexError but numpy gives shape {want.shape}"
        return
    assert want is not None, f"fs[{index!r}] returned shape {tuple(got.shape)} but numpy raises IndexError"
    assert tuple(got.shape) == want.shape and np.array_equal(got.numpy(), want), f"fs[{index!r}] differs from numpy"


def run(max_examples: int) -> dict:
    """Run both properties for ``max_examples`` cases in all; returns counts per property."""
    counts = {"core": 0, "feature_set": 0}
    with tempfile.TemporaryDirectory() as tmp:
        fs, expected = _stored_set(Path(tmp) / "store")

        @settings(max_examples=max_examples, deadline=None, database=None, suppress_health_check=list(HealthCheck))
        @given(which=st.booleans(), core=_core_case(), index=_index(N_ROWS))
        def prop(which, core, index):
            if which:
                counts["core"] += 1
                check_core(*core)
            else:
                counts["feature_set"] += 1
                check_feature_set(fs, expected, index)

        prop()
    return {**counts, "cases": counts["core"] + counts["feature_set"]}
