"""fs.batches / store.batches: every row once per epoch, seeded order, several sets, prefetch thread."""

from __future__ import annotations

import threading

import numpy as np
import pytest
import torch
from _util import make_store, rows_for

from featstore import Batch, FeatureStore

torch.set_num_threads(1)
N = 103


@pytest.fixture()
def store(tmp_path):
    make_store(tmp_path, key="enc/layer_10", n_rows=N, row_shape=(6,), seed=1)
    make_store(tmp_path, key="enc/layer_15", n_rows=N, row_shape=(2, 3), seed=2)
    return FeatureStore.open(tmp_path)


@pytest.mark.parametrize("prefetch", [0, 1, 3])
@pytest.mark.parametrize("drop_last", [False, True])
def test_one_epoch_serves_every_row_once(store, backend, prefetch, drop_last):
    fs = store["enc/layer_10"]
    loader = fs.batches(10, seed=3, drop_last=drop_last, prefetch=prefetch)
    seen = []
    for batch in loader:
        assert isinstance(batch, Batch)
        x, y, rows = batch
        assert torch.equal(x, fs[rows.numpy()])
        assert torch.equal(y, fs.labels[rows])
        assert x.shape[0] == (10 if drop_last else x.shape[0])
        seen.append(rows.numpy())
    seen = np.concatenate(seen)
    assert len(loader) == (10 if drop_last else 11)
    assert len(np.unique(seen)) == len(seen) == (100 if drop_last else N)


def test_seeded_epochs_repeat_and_differ(store):
    fs = store["enc/layer_10"]
    a = fs.batches(16, seed=0)
    b = fs.batches(16, seed=0)
    epoch0 = [r.numpy() for _, _, r in a]
    assert all(np.array_equal(p, q.numpy()) for p, (_, _, q) in zip(epoch0, b))
    epoch1 = np.concatenate([r.numpy() for _, _, r in a])
    assert not np.array_equal(np.concatenate(epoch0), epoch1)
    a.set_epoch(0)
    assert np.array_equal(np.concatenate([r.numpy() for _, _, r in a]), np.concatenate(epoch0))
    unshuffled = np.concatenate([r.numpy() for _, _, r in fs.batches(16, shuffle=False)])
    assert np.array_equal(unshuffled, np.arange(N))


def test_several_sets_share_rows_and_labels(store):
    loader = store.batches(["enc/layer_10", "enc/layer_15"], 32, seed=1)
    for feats, labels, rows in loader:
        assert set(feats) == {"enc/layer_10", "enc/layer_15"}
        assert feats["enc/layer_15"].shape == (len(rows), 2, 3)
        for key, x in feats.items():
            assert torch.equal(x, store[key][rows.numpy()])
        assert torch.equal(labels, rows % 4)


def test_subset_rows_and_explicit_labels(store):
    fs = store["enc/layer_10"]
    train = np.arange(0, N, 3)
    targets = np.arange(N) * 10
    seen = np.concatenate([r.numpy() for _, y, r in fs.batches(7, rows=train, labels=targets)])
    assert sorted(seen) == list(train)
    for _, y, r in fs.batches(7, rows=train, labels=targets):
        assert torch.equal(y, r * 10)
    for _, y, _ in fs.batches(7, labels=False):
        assert y is None


def test_breaking_early_stops_the_thread(store):
    fs = store["enc/layer_10"]
    before = threading.active_count()
    for i, _ in enumerate(fs.batches(1, prefetch=4)):
        if i == 2:
            break
    assert threading.active_count() == before


def test_errors_in_the_thread_reach_the_caller(store, monkeypatch):
    fs = store["enc/layer_10"]

    def boom(rows, out, threads=0, read="mmap"):
        raise OSError(f"disk on fire ({read})")

    monkeypatch.setattr(fs, "gather_into", boom)
    with pytest.raises(OSError, match="disk on fire"):
        list(fs.batches(10))


def test_bad_arguments(store):
    fs = store["enc/layer_10"]
    with pytest.raises(ValueError, match="batch_size"):
        fs.batches(0)
    with pytest.raises(ValueError, match="same rows"):
        make_other = FeatureStore.create(store.root)
        with make_other.create_feature_set("other/short", 5, (6,), "float16") as w:
            w.write(0, rows_for(0, 5, (6,)))
        FeatureStore.open(store.root).batches(["enc/layer_10", "other/short"], 4)
    if not torch.cuda.is_available():
        with pytest.raises(RuntimeError, match="torch.cuda.is_available"):
            fs.batches(8, device="cuda")


def test_cpu_batches_stay_valid_after_the_next_one(store):
    fs = store["enc/layer_10"]
    kept = [(x, r) for x, _, r in fs.batches(8, prefetch=2)]
    for x, r in kept:
        assert torch.equal(x, fs[r.numpy()])
    assert fs.batches(8).info["path"] == "cpu"


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_batches_match_cpu(store):
    fs = store["enc/layer_10"]
    for x, _, r in fs.batches(16, device="cuda", prefetch=2):
        assert x.is_cuda and torch.equal(x.cpu(), fs[r.numpy()])


def test_cpu_buffers_are_recycled_only_when_dropped(store):
    fs = store["enc/layer_10"]
    pointers, kept = set(), []
    for i, (x, _, r) in enumerate(fs.batches(10, prefetch=1, drop_last=True)):
        pointers.add(x.data_ptr())
        if i % 3 == 0:
            kept.append((x[:, :2], r))  # a view keeps its buffer out of the ring
    assert len(pointers) < 10, "dropped buffers are reused"
    for view, r in kept:
        assert torch.equal(view, fs[r.numpy()][:, :2])
