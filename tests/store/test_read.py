"""Reading: numpy indexing semantics, gather into preallocated buffers, zero-copy views, labels."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from _util import make_store
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from featstore import FeatureStore, MissingKeyError

torch.set_num_threads(1)
N = 53


@pytest.fixture(scope="module")
def stored(tmp_path_factory):
    root = tmp_path_factory.mktemp("store")
    store, data, labels = make_store(root, n_rows=N, row_shape=(3, 5), dtype=torch.float32)
    return store["enc/layer_1"], data.numpy()


def _index_strategy():
    ints = st.integers(-N, N - 1)
    return st.one_of(
        ints,
        st.lists(ints, max_size=40),
        st.lists(ints, max_size=40).map(lambda v: np.array(v, dtype=np.int64)),
        st.lists(ints, max_size=40).map(lambda v: np.array(v, dtype=np.int32)),
        st.lists(ints, min_size=1, max_size=40).map(lambda v: torch.tensor(v)),
        st.lists(st.booleans(), min_size=N, max_size=N).map(np.array),
        st.lists(st.booleans(), min_size=N, max_size=N).map(torch.tensor),
        st.builds(
            slice,
            st.none() | st.integers(-60, 60),
            st.none() | st.integers(-60, 60),
            st.none() | st.integers(-5, 5).filter(lambda s: s != 0),
        ),
        st.lists(ints, min_size=1, max_size=12).map(lambda v: np.array(v).reshape(1, -1)),
    )


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(index=_index_strategy())
def test_indexing_matches_numpy(stored, backend, index):
    fs, expected = stored
    np_index = index.numpy() if isinstance(index, torch.Tensor) else index
    want = expected[np_index]
    got = fs[index]
    assert got.shape == want.shape
    assert np.array_equal(got.numpy(), want)


@pytest.mark.parametrize("index", [N, -N - 1, [0, N], np.array([-N - 1]), torch.tensor([N + 5])])
def test_out_of_range_is_an_index_error(stored, backend, index):
    fs, _ = stored
    with pytest.raises(IndexError, match="out of bounds for axis 0 with size 53"):
        fs[index]


@pytest.mark.parametrize("index", [1.5, "a", np.array([1.0]), np.ones(N - 1, dtype=bool), True, {1}])
def test_non_indices_are_rejected(stored, index):
    fs, _ = stored
    with pytest.raises(IndexError):
        fs[index]


def test_tuple_indexing_selects_within_rows(stored):
    fs, expected = stored
    assert np.array_equal(fs[4, 1].numpy(), expected[4, 1])
    assert np.array_equal(fs[[1, 2], :, 3].numpy(), expected[[1, 2], :, 3])
    assert np.array_equal(fs[..., 0].numpy(), expected[..., 0])


def test_gather_into_preallocated_buffer(stored, backend):
    fs, expected = stored
    out = torch.full((4, 3, 5), -1.0)
    result = fs.gather([5, -1, 5, 0], out=out)
    assert result is out
    assert np.array_equal(out.numpy(), expected[[5, -1, 5, 0]])
    with pytest.raises(ValueError, match=r"shape \(4, 3, 5\)"):
        fs.gather([1, 2, 3, 4], out=torch.empty(4, 15))
    with pytest.raises(ValueError, match="torch.float32"):
        fs.gather([1, 2, 3, 4], out=torch.empty(4, 3, 5, dtype=torch.float16))
    before = out.clone()
    with pytest.raises(IndexError):
        fs.gather([1, 2, 3, 99], out=out)
    assert torch.equal(out, before)


def test_views_are_zero_copy_and_copy_on_write(stored):
    fs, expected = stored
    view = fs.to_torch()
    again = fs.to_torch()
    assert view.data_ptr() == again.data_ptr()
    assert fs[2:9].data_ptr() == view[2:9].data_ptr()
    view[0] += 1000.0  # a private page: never reaches the file, never crashes
    reopened = FeatureStore.open(fs.root)["enc/layer_1"]
    assert np.array_equal(reopened[0].numpy(), expected[0])
    assert np.array_equal(fs.to_numpy()[1], expected[1])


def test_labels_and_metadata(stored):
    fs, _ = stored
    assert fs.labels.dtype == torch.int64 and torch.equal(fs.labels, torch.arange(N) % 4)
    assert fs.metadata == {"seed": 0}


def test_bfloat16_has_no_numpy_view(tmp_path):
    store, data, _ = make_store(tmp_path, dtype=torch.bfloat16)
    fs = store["enc/layer_1"]
    assert torch.equal(fs[[3, 1]], data[[3, 1]])
    with pytest.raises(TypeError, match="bfloat16"):
        fs.to_numpy()


def test_missing_key_names_what_exists(stored):
    fs, _ = stored
    store = FeatureStore.open(fs.root)
    with pytest.raises(MissingKeyError, match="no feature set 'enc/layer_9'.*enc/layer_1"):
        store["enc/layer_9"]
    assert store.keys("enc/*") == ["enc/layer_1"] and store.keys("clip/*") == []


def test_advise_hints(stored):
    fs, expected = stored
    for advice in ("random", "sequential", "willneed", "normal"):
        fs.advise(advice)
    assert np.array_equal(fs[3].numpy(), expected[3])
