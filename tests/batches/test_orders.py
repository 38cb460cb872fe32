"""order="block": every row exactly once per epoch, windows of whole blocks, seeded, rank shares that are
disjoint and cover everything; the block cache reads each block once."""

from __future__ import annotations

import os
import threading

import numpy as np
import pytest
import torch
from _util import make_store
from hypothesis import given, settings
from hypothesis import strategies as st

from featstore import FeatureStore
from featstore.batches.block_reader import BlockCache
from featstore.batches.orders import OrderAhead, block_order, block_rows_for, block_share, sorted_positions

torch.set_num_threads(1)


@settings(max_examples=200, deadline=None)
@given(
    n=st.integers(0, 700),
    block_rows=st.integers(1, 50),
    window=st.integers(1, 6),
    seed=st.integers(0, 2**32),
    subset=st.booleans(),
)
def test_block_order_is_a_permutation_of_whole_blocks_in_windows(n, block_rows, window, seed, subset):
    rows = np.arange(n, dtype=np.int64)
    if subset:
        rows = np.random.default_rng(seed).permutation(rows)[: n // 2]  # a split, in any order
    order = block_order(rows, seed, 3, block_rows, window)
    assert order.dtype == np.int64 and np.array_equal(np.sort(order), np.sort(rows))  # every row exactly once
    sorted_rows = np.sort(rows)
    block_of = np.searchsorted(sorted_rows, order) // block_rows
    size = [min(block_rows, len(rows) - b * block_rows) for b in range(-(-len(rows) // block_rows))]
    seen: set[int] = set()
    count = 0
    for b in block_of.tolist():  # the order cuts into windows of `window` whole blocks (the last: fewer)
        seen.add(b)
        count += 1
        assert len(seen) <= window
        if len(seen) == window and count == sum(size[k] for k in seen):
            seen, count = set(), 0
    assert count == sum(size[k] for k in seen)
    assert np.array_equal(order, block_order(rows, seed, 3, block_rows, window))  # seeded


def test_epochs_and_seeds_differ_and_blocks_stay_contiguous():
    rows = np.arange(10_000, dtype=np.int64)
    a, b, c = (block_order(rows, s, e, 100, 4) for s, e in ((0, 0), (0, 1), (1, 0)))
    assert not np.array_equal(a, b) and not np.array_equal(a, c)
    # sorted, each window of 400 positions is exactly 4 runs of 100 contiguous rows
    window = np.sort(a[:400])
    assert (np.diff(window) == 1).sum() == 396


@pytest.mark.parametrize("drop_last", [False, True])
@pytest.mark.parametrize("n,world", [(1000, 4), (1003, 4), (7, 3), (5, 8)])
def test_rank_shares_are_disjoint_and_cover_everything(n, world, drop_last):
    order = block_order(np.arange(n, dtype=np.int64), 0, 0, 16, 2)
    shares = [block_share(order, r, world, drop_last) for r in range(world)]
    assert len({len(s) for s in shares}) == 1  # every rank the same number of rows
    joined = np.concatenate(shares)
    if drop_last:
        assert len(joined) == n // world * world and len(np.unique(joined)) == len(joined)
    else:
        assert set(joined.tolist()) == set(range(n))
        assert len(joined) - len(np.unique(joined)) == -(-n // world) * world - n  # only the padding repeats


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    root = tmp_path_factory.mktemp("orders")
    make_store(root, key="enc/a", n_rows=1000, row_shape=(32,), seed=1)  # 64-byte rows
    make_store(root, key="enc/b", n_rows=1000, row_shape=(8,), dtype=torch.float32, seed=2)
    return FeatureStore.open(root)


@pytest.mark.parametrize("read", ["mmap", "direct"])
def test_block_batches_serve_every_row_once(store, backend, read):
    loader = store.batches(["enc/a", "enc/b"], 64, order="block", block_bytes=96 * 25, window_blocks=3, read=read)
    assert loader.info["order"] == "block" and loader.info["block_rows"] == 25 and loader.info["window_blocks"] == 3
    seen = []
    for feats, labels, rows in loader:
        for key in ("enc/a", "enc/b"):
            assert torch.equal(feats[key], store[key][rows.numpy()])
        assert torch.equal(labels, store["enc/a"].labels[rows])
        seen.append(rows.numpy())
    seen = np.concatenate(seen)
    assert np.array_equal(seen, loader.epoch_order(0)) and np.array_equal(np.sort(seen), np.arange(1000))


def test_block_batches_across_ranks(store):
    shares = [store["enc/a"].batches(50, order="block", rank=r, world_size=3, seed=9).epoch_order(2) for r in range(3)]
    assert set(np.concatenate(shares).tolist()) == set(range(1000)) and len({len(s) for s in shares}) == 1


def test_block_cache_reads_each_block_once(store, backend):
    fs = store["enc/a"]
    cache = BlockCache(fs, 40, n_slots=2 * 4 + 2)
    order = block_order(np.arange(1000, dtype=np.int64), 5, 0, 40, 4)
    for start in range(0, 1000, 128):
        idx = order[start : start + 128]
        out = torch.empty(len(idx), 32, dtype=torch.float16)
        cache.read(idx, out)
        assert torch.equal(out, fs[idx])
    assert cache.blocks_read == 25  # 1000 rows / 40: every block read once, whole
    wide = np.arange(0, 1000, 10, dtype=np.int64)  # 100 rows in 25 blocks: more than the cache holds
    out = torch.empty(100, 32, dtype=torch.float16)
    cache.read(wide, out)
    assert torch.equal(out, fs[wide]) and cache.blocks_read == 25  # read row by row, not through the cache


def test_bad_order_arguments(store):
    fs = store["enc/a"]
    with pytest.raises(ValueError, match="order must be one of 'random', 'block', got 'sorted'"):
        fs.batches(8, order="sorted")
    with pytest.raises(ValueError, match="cannot go with shuffle=False"):
        fs.batches(8, order="block", shuffle=False)
    with pytest.raises(ValueError, match="block_bytes must be a positive integer"):
        fs.batches(8, order="block", block_bytes=0)
    with pytest.raises(ValueError, match="window_blocks must be a positive integer"):
        fs.batches(8, order="block", window_blocks=0)
    assert block_rows_for(1536) == 2730 and block_rows_for(10 << 20) == 1


def test_read_ahead_reads_each_block_once_and_stops_with_its_owner(store, backend):
    import gc
    import threading

    from featstore.batches.block_reader import BlockReadAhead

    fs = store["enc/a"]
    order = block_order(np.arange(1000, dtype=np.int64), 5, 0, 40, 4)
    chunks = [order[i : i + 128] for i in range(0, 1000, 128)]
    ahead = BlockReadAhead(fs, 40, 2 * 4 + 2, chunks)
    assert ahead.ok
    for idx in chunks:
        out = torch.empty(len(idx), 32, dtype=torch.float16)
        ahead.read(idx, out)
        assert torch.equal(out, fs[idx])
    assert ahead.cache.blocks_read == 25 and len(ahead.state.free) == 10  # each block once, every slot freed
    other = np.array([999, 0, 500], dtype=np.int64)  # not the planned batch: read row by row
    out = torch.empty(3, 32, dtype=torch.float16)
    ahead.read(other, out)
    assert torch.equal(out, fs[other])
    # an epoch abandoned early: the thread stops once its reader is dropped
    early = BlockReadAhead(fs, 40, 10, chunks)
    early.read(chunks[0], torch.empty(128, 32, dtype=torch.float16))
    state = early.state
    del early, ahead
    gc.collect()
    for _ in range(50):
        if not any(t.name == "featstore-read-ahead" and t.is_alive() for t in threading.enumerate()):
            break
        threading.Event().wait(0.05)
    assert state.stop and not any(t.name == "featstore-read-ahead" and t.is_alive() for t in threading.enumerate())


def test_read_ahead_declines_a_plan_that_does_not_fit(store):
    from featstore.batches.block_reader import BlockReadAhead

    fs = store["enc/a"]
    spread = [np.arange(0, 1000, 10, dtype=np.int64)]  # 100 rows in 25 blocks, more than 10 slots
    ahead = BlockReadAhead(fs, 40, 10, spread)
    assert not ahead.ok
    out = torch.empty(100, 32, dtype=torch.float16)
    ahead.read(spread[0], out)
    assert torch.equal(out, fs[spread[0]])


@pytest.mark.parametrize("o_direct", [True, False])
@pytest.mark.parametrize(
    ("row_shape", "dtype", "labels"),
    [
        ((32,), torch.float16, False),  # 64-byte rows: one piece a row
        ((96,), torch.float16, True),  # 192 bytes: 3 pieces of 64
        ((2048,), torch.float32, False),  # 8 KiB: 2 pieces of a page
        ((257, 3), torch.float16, True),  # 1542 bytes: pieces of 2 would be slow; read through the cache
        ((7,), torch.int8, False),
    ],
)
def test_block_reads_with_and_without_o_direct_give_the_rows(
    tmp_path, backend, monkeypatch, o_direct, row_shape, dtype, labels
):
    """Blocks read with O_DIRECT (whole pages, a block anywhere in its slot, gathered in pieces) or
    through the cache give exactly the rows; the set's last block ends in a partial page of the file
    when there are no labels after it (read through the cache)."""
    from featstore.store.direct import DirectReader

    if not o_direct:
        monkeypatch.setattr(DirectReader, "direct_fd", lambda self: None)
    store, data, _ = make_store(tmp_path / "s", n_rows=333, row_shape=row_shape, dtype=dtype, labels=labels)
    fs = store["enc/layer_1"]
    rows_per_block = 29
    cache = BlockCache(fs, rows_per_block, n_slots=4)
    row_bytes = fs.row_bytes
    assert cache.o_direct == (o_direct and row_bytes % 64 == 0)
    order = block_order(np.arange(333, dtype=np.int64), 1, 0, rows_per_block, 2)
    for start in range(0, 333, 40):
        idx = order[start : start + 40]
        out = torch.empty(len(idx), *row_shape, dtype=dtype)
        cache.read(idx, out)
        assert torch.equal(out, data[idx])
    assert cache.blocks_read >= 12  # 12 blocks of 29 (the last 14 rows), some read again after eviction


def test_an_o_direct_block_read_of_a_truncated_file_names_it(tmp_path):
    from featstore.errors import CorruptFileError

    store, _, _ = make_store(tmp_path / "s", n_rows=400, row_shape=(64,), labels=False)
    fs = store["enc/layer_1"]
    cache = BlockCache(fs, 50, n_slots=4)
    assert cache.o_direct
    os.truncate(fs.path, fs.direct.data_start + 300 * fs.row_bytes)
    with pytest.raises(CorruptFileError, match=r"feature set 'enc/layer_1': .*is \d+ bytes, but its rows end at byte"):
        cache.read(np.arange(350, 360, dtype=np.int64), torch.empty(10, 64, dtype=torch.float16))


@pytest.mark.parametrize("o_direct", [True, False])
@pytest.mark.parametrize("scheme", ["int8", "float8_e4m3"])
def test_block_reads_of_a_quantised_set_dequantise_like_its_gather(tmp_path, backend, monkeypatch, o_direct, scheme):
    """A quantised set in block order: the block cache holds its codes and dequantises each batch
    with its rows' scales, bit for bit what fs.gather gives."""
    from featstore.store.direct import DirectReader

    if not o_direct:
        monkeypatch.setattr(DirectReader, "direct_fd", lambda self: None)
    store = FeatureStore.create(tmp_path / "s")
    x = torch.randn(300, 4, 64, generator=torch.Generator().manual_seed(3)).half()
    with store.create_feature_set("enc/q", 300, (4, 64), "float16", quant=scheme) as w:
        w.write(0, x)
    fs = store.refresh()["enc/q"]
    loader = fs.batches(32, order="block", block_bytes=20 * 256, window_blocks=2, read="direct", labels=False)
    seen = []
    for batch in loader:
        assert batch.features.dtype == torch.float16
        assert torch.equal(batch.features, fs.gather(batch.indices.numpy()))
        seen.append(batch.indices.numpy())
    assert sorted(np.concatenate(seen).tolist()) == list(range(300))
    cache = BlockCache(fs, 20, n_slots=6)
    assert cache.o_direct == o_direct
    idx = np.array([5, 19, 0, 7], dtype=np.int64)
    out = torch.empty(4, 4, 64, dtype=torch.float32)
    cache.read(idx, out)
    assert torch.equal(out, fs.gather(idx, dtype=torch.float32)) and cache.blocks_read == 1


@pytest.mark.parametrize("order", ["random", "block"])
def test_orders_drawn_ahead_are_the_epochs_orders(tmp_path, order):
    """Each epoch is served in exactly epoch_order(epoch), whether the order was drawn ahead (consecutive
    epochs) or not (set_epoch jumps, a fresh loader)."""
    store, _, _ = make_store(tmp_path, n_rows=300, row_shape=(4,))
    fs = FeatureStore.open(tmp_path)["enc/layer_1"]
    loader = fs.batches(32, seed=5, order=order, labels=False, block_bytes=256)
    fresh = fs.batches(32, seed=5, order=order, labels=False, block_bytes=256)
    drawn_here, drawn_ahead = [], []
    draw = loader.epoch_order

    def recorded(epoch):  # the epochs the loader draws, on this thread or on one drawing ahead
        (drawn_here if threading.current_thread() is threading.main_thread() else drawn_ahead).append(epoch)
        return draw(epoch)

    loader.epoch_order = recorded
    for epoch in (0, 1, 2, 7, 8, 3):
        if epoch in (7, 3):
            loader.set_epoch(epoch)
        served = np.concatenate([b.indices.numpy() for b in loader])
        assert np.array_equal(served, fresh.epoch_order(epoch)), epoch
    assert drawn_here == [0, 7, 3]  # a fresh start and each jump draw their epoch when it starts
    assert {1, 2, 8} <= set(drawn_ahead)  # the epochs that followed one another were drawn while the last ran
    assert loader.epoch == 4


def test_an_order_that_fails_to_draw_raises_when_taken():
    def draw(epoch):
        raise RuntimeError(f"no order for epoch {epoch}")

    ahead = OrderAhead(draw, 3)
    with pytest.raises(RuntimeError, match="no order for epoch 3"):
        ahead.result()
    assert np.array_equal(OrderAhead(lambda e: np.arange(e), 4).result(), np.arange(4))


@settings(max_examples=100, deadline=None)
@given(n=st.integers(0, 300), levels=st.integers(1, 1000), seed=st.integers(0, 99))
def test_sorted_positions_are_the_stable_argsort_ties_included(n, levels, seed):
    """The block order's window sort is exactly the stable argsort; few key levels force ties."""
    key = np.random.default_rng(seed).integers(0, levels, n).astype(np.float64)
    assert np.array_equal(sorted_positions(key), np.argsort(key, kind="stable"))


def _lexsort_block_order(rows, seed, epoch, block_rows, window_blocks):
    """The block order as first written (whole-array arithmetic and a two-key lexsort): the reference."""
    base = np.sort(rows)
    n = len(base)
    rng = np.random.default_rng([seed, epoch, 0xB10C])
    n_blocks = -(-n // block_rows)
    starts = rng.permutation(n_blocks) * block_rows
    lengths = np.minimum(block_rows, n - starts)
    before = np.cumsum(lengths) - lengths
    seq = np.arange(n) - np.repeat(before, lengths) + np.repeat(starts, lengths)
    window = np.repeat(np.arange(n_blocks) // window_blocks, lengths)
    return base[seq[np.lexsort((rng.random(n), window))]]


@settings(max_examples=100, deadline=None)
@given(n=st.integers(0, 2000), block_rows=st.integers(1, 80), window=st.integers(1, 6), seed=st.integers(0, 2**32))
def test_block_order_is_unchanged_from_the_lexsort_construction(n, block_rows, window, seed):
    """A window-at-a-time order is the very order the first version drew, subsets of rows included: a
    seed gives the same epochs as before."""
    rows = np.random.default_rng(seed).choice(3 * n + 1, n, replace=False)
    assert np.array_equal(
        block_order(rows, seed, 2, block_rows, window), _lexsort_block_order(rows, seed, 2, block_rows, window)
    )
