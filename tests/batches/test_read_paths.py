"""batches(read=...) and dataset(read=...): the direct path serves the same batches as the mapping, and
loader.info says which path runs and why."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from _util import make_store

from featstore import FeatureStore

torch.set_num_threads(1)
N = 211


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    root = tmp_path_factory.mktemp("read-paths")
    make_store(root, key="enc/a", n_rows=N, row_shape=(12,), seed=1)
    make_store(root, key="enc/b", n_rows=N, row_shape=(2, 5), dtype=torch.float32, seed=2)
    return FeatureStore.open(root)


@pytest.mark.parametrize("prefetch", [0, 2])
def test_direct_batches_equal_mmap_batches(store, backend, prefetch):
    mapped = store.batches(["enc/a", "enc/b"], 17, seed=5, read="mmap", prefetch=prefetch)
    direct = store.batches(["enc/a", "enc/b"], 17, seed=5, read="direct", prefetch=prefetch)
    assert mapped.info["read"] == "mmap" and direct.info["read"] == "direct"
    assert direct.info["read_why"] == "read='direct' requested"
    n = 0
    for (fa, ya, ra), (fb, yb, rb) in zip(mapped, direct, strict=True):
        assert torch.equal(ra, rb) and torch.equal(ya, yb)
        for key in ("enc/a", "enc/b"):
            assert torch.equal(fa[key], fb[key]) and torch.equal(fb[key], store[key][rb.numpy()])
        n += len(rb)
    assert n == N


def test_auto_says_why(store):
    loader = store["enc/a"].batches(64)
    assert loader.info["read"] == "mmap"  # a few KiB fit anywhere
    assert loader.info["read_why"].startswith("auto: the sets (0.0 MiB) fit in ")


def test_bad_read_is_a_value_error(store):
    with pytest.raises(ValueError, match="read must be one of 'auto', 'mmap', 'direct', got 'fast'"):
        store["enc/a"].batches(8, read="fast")
    with pytest.raises(ValueError, match="read must be one of"):
        store["enc/a"].dataset(read="fast")


def test_dataset_reads_direct(store, backend):
    ds = store.dataset(["enc/a", "enc/b"], read="direct")
    assert ds.read == "direct" and ds.read_choice.why == "read='direct' requested"
    rows = [3, 210, 3, 0]
    got = ds.__getitems__(rows)
    assert torch.equal(got.features["enc/b"], store["enc/b"][rows])
    assert torch.equal(got.labels, store["enc/a"].labels[rows])
    loader = torch.utils.data.DataLoader(store["enc/a"].dataset(read="direct"), batch_size=50)
    assert torch.equal(torch.cat([x for x, _ in loader]), store["enc/a"][:])
    assert np.array_equal(store["enc/a"].dataset(read="mmap")[7][0].numpy(), store["enc/a"][7].numpy())


def test_a_dataset_on_cached_pages_reads_direct_once_they_go(store, monkeypatch):
    """An auto choice of mmap that rests on cached pages is asked again as the dataset is read."""
    import pickle

    from featstore.store import memory

    fs = store["enc/a"]
    float(fs[:].float().sum())  # every page in memory
    monkeypatch.setattr(memory, "memory_facts", lambda: memory.MemoryFacts(1, "/cg/memory.max", 2**34, 0))
    ds = fs.dataset()
    assert ds.read == "mmap" and ds.read_choice.fragile
    assert torch.equal(ds.__getitems__([4, 9]).features, fs[[4, 9]])
    monkeypatch.setattr(type(fs), "resident_bytes", lambda self: 0)  # the pages go
    monkeypatch.setattr(memory, "AUTO_RECHECK_S", -1.0)
    assert torch.equal(ds.__getitems__([9, 0]).features, fs[[9, 0]])
    assert ds.read == "direct" and not ds.read_choice.fragile and "direct reads" in ds.read_choice.why
    again = pickle.loads(pickle.dumps(ds))  # as a spawned DataLoader worker gets it
    assert again.read == "direct" and torch.equal(again[3][0], fs[3])
