"""The map-style Dataset: batched __getitems__, DataLoader workers under fork and spawn."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from _util import make_store
from torch.utils.data import DataLoader

import featstore
from featstore import FeatureStore

torch.set_num_threads(1)
N = 90


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    root = tmp_path_factory.mktemp("ds")
    make_store(root, key="enc/a", n_rows=N, row_shape=(5,), seed=1)
    make_store(root, key="enc/b", n_rows=N, row_shape=(2, 2), seed=2, labels=False)
    return FeatureStore.open(root)


def test_getitem_and_getitems(store, backend):
    ds = store["enc/a"].dataset()
    x, y = ds[7]
    assert torch.equal(x, store["enc/a"][7]) and int(y) == 7 % 4
    batch = ds.__getitems__([3, 1, 3])
    assert len(batch) == 3
    assert torch.equal(batch.features, store["enc/a"][[3, 1, 3]])


@pytest.mark.parametrize("collate", [None, featstore.collate])
def test_plain_dataloader_batches(store, collate):
    ds = store["enc/a"].dataset()
    kwargs = {"collate_fn": collate} if collate else {}
    seen = []
    for x, y in DataLoader(ds, batch_size=16, shuffle=True, **kwargs):
        assert x.shape[1:] == (5,) and x.shape[0] == y.shape[0]
        rows = [int(np.flatnonzero((store["enc/a"].to_torch() == row).all(1))[0]) for row in x]
        assert torch.equal(y, torch.tensor(rows) % 4)
        seen += rows
    assert sorted(seen) == list(range(N))


@pytest.mark.parametrize("context", ["fork", "spawn"])
def test_workers_fork_and_spawn(store, context):
    ds = store.dataset(["enc/a", "enc/b"])
    loader = DataLoader(
        ds,
        batch_size=20,
        shuffle=False,
        num_workers=2,
        multiprocessing_context=context,
        collate_fn=featstore.collate,
        timeout=120,
    )
    got = list(loader)
    feats = torch.cat([f["enc/a"] for f, _ in got])
    grids = torch.cat([f["enc/b"] for f, _ in got])
    assert torch.equal(feats, store["enc/a"][:]) and torch.equal(grids, store["enc/b"][:])
    assert torch.equal(torch.cat([y for _, y in got]), torch.arange(N) % 4)


def test_default_collate_with_several_sets(store):
    ds = store.dataset(["enc/a", "enc/b"])
    feats, labels = next(iter(DataLoader(ds, batch_size=8)))
    assert feats["enc/b"].shape == (8, 2, 2) and torch.equal(labels, torch.arange(8) % 4)
