"""The CUDA paths on a GPU (skipped without one): every load width of the kernel, a set past 2 GiB
(64-bit offsets, on the CPU too), the pages that registering pins (RssAnon), a slot-overwrite
stress of the pinned ring, and a non-default device."""

from __future__ import annotations

import gc
from pathlib import Path

import numpy as np
import pytest
import torch
from _util import make_store

import featstore.batches.cuda as fcuda
from featstore import FeatureStore
from featstore.store.memory import meminfo_field

needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
needs_kernel = pytest.mark.skipif(
    not (torch.cuda.is_available() and fcuda.uva_support(torch.device("cuda"))[0]),
    reason="needs a CUDA GPU and a usable featstore._cuda (the kernel path)",
)
needs_two = pytest.mark.skipif(
    not (torch.cuda.is_available() and torch.cuda.device_count() >= 2), reason="needs two CUDA GPUs (cuda:1)"
)


def same_bits(a: torch.Tensor, b: torch.Tensor) -> bool:
    return a.shape == b.shape and a.dtype == b.dtype and torch.equal(a.cpu().view(torch.uint8), b.view(torch.uint8))


# ---- a set past 2 GiB: byte offsets beyond int32 ------------------------------------------------
BIG_ROWS, BIG_SHAPE = 600_000, (1024,)  # float32: 4096 bytes a row, 2.46 GB in all (a sparse file)
TAIL = 64


def big_set(root: Path):
    """Only the last TAIL rows are written (row r holds r + column / 1e4), so the file stays sparse."""
    store = FeatureStore.create(root)
    tail = torch.arange(BIG_ROWS - TAIL, BIG_ROWS, dtype=torch.float32)[:, None] + torch.arange(1024) / 1e4
    with store.create_feature_set("big", BIG_ROWS, BIG_SHAPE, torch.float32, labels=np.zeros(BIG_ROWS, np.int64)) as w:
        w.write(BIG_ROWS - TAIL, tail)
    return store.get("big", allow_incomplete=True), tail


def test_a_set_past_2_gib_gathers_its_last_rows_on_the_cpu(tmp_path):
    """gather.cpp and the direct reader compute 64-bit byte offsets (row * row_bytes > 2**31)."""
    fs, tail = big_set(tmp_path)
    assert fs.nbytes > 2**31 and (BIG_ROWS - TAIL) * fs.row_bytes > 2**31
    idx = [BIG_ROWS - 1, BIG_ROWS - TAIL, BIG_ROWS - 7]
    want = tail[[TAIL - 1, 0, TAIL - 7]]
    for read in ("mmap", "direct"):
        assert torch.equal(fs.gather(idx, read=read), want)


@needs_kernel
def test_the_kernel_gathers_past_2_gib(tmp_path):
    fs, tail = big_set(tmp_path)
    got = fcuda.gather(fs, [BIG_ROWS - 1, BIG_ROWS - TAIL])
    assert torch.equal(got.cpu(), tail[[TAIL - 1, 0]])
    fcuda.unregister(fs)


# ---- load widths ----------------------------------------------------------------------------------
@needs_kernel
@pytest.mark.parametrize("row_bytes", [1, 3, 2, 6, 4, 12, 8, 24, 16, 48])
@pytest.mark.parametrize("out_offset", [0, 1])
def test_every_load_width_is_exact(row_bytes, out_offset):
    """16/8/4/2/1-byte loads: row_bytes and the addresses pick the width; an odd output address forces 1."""
    mod, dev = fcuda.module(), torch.device("cuda", torch.cuda.current_device())
    n_rows, rows = 97, np.array([96, 0, 5, 5, 50, 1], dtype=np.int64)
    src = torch.randint(0, 256, (n_rows, row_bytes), dtype=torch.uint8)
    plan = torch.from_numpy(fcuda.sorted_plan(rows)).to(dev)
    out = torch.zeros(len(rows) * row_bytes + 1, dtype=torch.uint8, device=dev)
    src_dev = src.to(dev)
    mod.gather(
        src_dev.data_ptr(),
        n_rows,
        row_bytes,
        plan[0].data_ptr(),
        plan[1].data_ptr(),
        len(rows),
        out.data_ptr() + out_offset,
        0,
        dev.index,
        torch.cuda.current_stream(dev).cuda_stream,
    )
    got = out[out_offset : out_offset + len(rows) * row_bytes].cpu().view(len(rows), row_bytes)
    assert torch.equal(got, src[rows])


# ---- what registering pins -------------------------------------------------------------------------
def rss_anon() -> int:
    return meminfo_field(Path("/proc/self/status").read_text(), "RssAnon") or 0


@needs_kernel
def test_registering_pins_the_page_cache_not_an_anonymous_copy(tmp_path):
    """Finding 1: RssAnon before and after registering 512 MiB; read-only mode must not copy the set."""
    warm = make_store(tmp_path / "warm", n_rows=64, row_shape=(1024,))[0]["enc/layer_1"]
    fcuda.gather(warm, [0])  # the CUDA context and the runtime's own allocations come first
    fcuda.unregister(warm)
    store = FeatureStore.create(tmp_path / "big")
    n = 512 * 1024  # rows of 1 KiB
    with store.create_feature_set("s", n, (512,), torch.float16) as w:
        w.write(0, torch.randn(n, 512).half())
    fs = store["s"]
    mode = fcuda.register_mode(torch.device("cuda"))
    before = rss_anon()
    fcuda.REGISTRY.device_pointer(fs, torch.cuda.current_device())
    grew = rss_anon() - before
    print(f"register mode {mode}: RssAnon grew {grew / 2**20:.1f} MiB for a {fs.nbytes / 2**20:.0f} MiB set")
    if mode == "read-only":
        assert grew < fs.nbytes // 8
    else:  # the plain registration of a private mapping pins a copy: what the budget counts twice
        assert grew > fs.nbytes // 2
    assert same_bits(fcuda.gather(fs, [0, n - 1]), fs[[0, n - 1]])
    fcuda.unregister(fs)


# ---- the pinned ring under pressure ----------------------------------------------------------------
@needs_cuda
def test_pinned_slots_are_not_overwritten_while_in_use(tmp_path):
    """Large batches, prefetch=1, a slow consumer that keeps every batch: no batch sees a later one's bytes."""
    make_store(tmp_path, n_rows=8192 * 6 + 100, row_shape=(768,), dtype=torch.float16)
    fs = FeatureStore.open(tmp_path)["enc/layer_1"]
    expected = list(fs.batches(8192, seed=3))
    held = []
    for x, y, rows in fs.batches(8192, seed=3, device="cuda", cache="pinned", prefetch=1):
        torch.cuda._sleep(50_000_000)  # the consumer's stream is busy; the producer runs ahead
        held.append((x, x.clone(), y, rows))
    torch.cuda.synchronize()
    assert len(held) == len(expected)
    for (x, copy, y, rows), (ex, ey, er) in zip(held, expected):
        assert torch.equal(rows, er) and torch.equal(y.cpu(), ey)
        assert same_bits(x, ex) and same_bits(copy, ex)


# ---- a non-default device ----------------------------------------------------------------------------
@needs_two
@pytest.mark.parametrize("cache", ["device", "pinned", "uva"])
def test_batches_on_cuda_1(tmp_path, cache):
    if cache == "uva" and not fcuda.uva_support(torch.device("cuda", 1))[0]:
        pytest.skip("the kernel path cannot run on cuda:1")
    make_store(tmp_path, n_rows=300, row_shape=(40,), dtype=torch.bfloat16)
    fs = FeatureStore.open(tmp_path)["enc/layer_1"]
    torch.cuda.set_device(0)
    expected = list(fs.batches(64, seed=1))
    got = list(fs.batches(64, seed=1, device="cuda:1", cache=cache))
    torch.cuda.synchronize(1)
    assert torch.cuda.current_device() == 0  # nothing moved the caller to GPU 1
    for (x, y, rows), (ex, ey, er) in zip(got, expected):
        assert x.device == torch.device("cuda", 1) and y.device == torch.device("cuda", 1)
        assert same_bits(x, ex) and torch.equal(y.cpu(), ey) and torch.equal(rows, er)
    if cache == "uva":
        assert same_bits(fcuda.gather(fs, [3, 1], device="cuda:1"), fs[[3, 1]])
        fcuda.unregister(fs)
    del got
    gc.collect()
