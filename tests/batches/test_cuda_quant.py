"""Quantised sets on the CUDA paths: the dequantising kernel (csrc/cuda_dequant.cu) and its policy.

Without a GPU: what is registered (codes through scales), what the kernel is asked (simulated
featstore._cuda), what the device cache holds and how "auto" sizes it, and the device cache's torch
fallback (run on the CPU) against the CPU gather. With a GPU (skipped here): the kernel against the
CPU core bit for bit, for every code of each scheme, each output dtype, and through the loader paths.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import featstore.batches.cuda as fcuda
from featstore import FeatureStore
from featstore.batches import device_assemblers as dev
from featstore.batches.device_paths import held_bytes

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
import gpu_check_quant

SCHEMES = ["int8", "float8_e4m3"]
OUT_DTYPES = [torch.float16, torch.bfloat16, torch.float32]
SHAPES = [(24,), (37,), (5, 16), (3, 7)]  # pooled, an odd width, patch grids (per-token scales)

needs_kernel = pytest.mark.skipif(
    not (torch.cuda.is_available() and fcuda.uva_support(torch.device("cuda"))[0]),
    reason="needs a CUDA GPU and a usable featstore._cuda (the kernel path)",
)


def quant_set(root, scheme: str, row_shape=(24,), n: int = 40, seed: int = 0, key: str = "enc/q"):
    """A quantised set of float16 rows whose vectors differ in size by 5 decades (one all-zero row)."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn((n, *row_shape), generator=g)
    x = (x * torch.logspace(-3, 2, x[..., :1].numel()).view(*x.shape[:-1], 1)).half()
    x[3] = 0
    store = FeatureStore.create(root)
    with store.create_feature_set(key, n, row_shape, "float16", {}, np.arange(n) % 3, quant=scheme) as w:
        w.write(0, x)
    return store.refresh()[key]


def same_bits(a: torch.Tensor, b: torch.Tensor) -> bool:
    a, b = a.detach().cpu().contiguous(), b.detach().cpu().contiguous()
    return a.shape == b.shape and a.dtype == b.dtype and torch.equal(a.view(torch.uint8), b.view(torch.uint8))


class Recorder:
    """featstore._cuda's registration and launch calls, recorded (no driver, no GPU)."""

    def __init__(self):
        self.registered: dict[int, int] = {}
        self.launches: list[tuple[str, tuple]] = []

    def device_count(self):
        return 1, ""

    def read_only_register_supported(self, device):
        return True

    def host_register(self, ptr, nbytes, read_only, device):
        self.registered[ptr] = nbytes
        return True

    def host_unregister(self, ptr):
        return self.registered.pop(ptr, None) is not None

    def device_pointer(self, ptr, device):
        return ptr + (1 << 48)

    def gather(self, *args):
        self.launches.append(("gather", args))

    def dequant_gather(self, *args):
        self.launches.append(("dequant_gather", args))


@pytest.fixture()
def recorder(monkeypatch):
    mod = Recorder()
    monkeypatch.setattr(fcuda, "module", lambda: mod)
    monkeypatch.setattr(fcuda, "REGISTRY", fcuda.HostRegistry(mod, synchronize=lambda device: None))
    return mod


# ---- without a GPU ------------------------------------------------------------------------------
def test_a_quantised_set_registers_its_codes_through_its_scales(tmp_path, recorder):
    fs = quant_set(tmp_path, "int8", (5, 16))
    layout = fs.record.layout
    assert layout.scales_begin >= fs.nbytes and layout.data_bytes == layout.scales_begin + layout.scales_bytes
    src = fcuda.REGISTRY.device_pointer(fs, 0)
    assert list(recorder.registered.values()) == [layout.data_bytes] == [fcuda.registered_bytes(fs)]
    assert fcuda.REGISTRY.pinned_bytes() == layout.data_bytes
    assert src == next(iter(recorder.registered)) + (1 << 48)


@pytest.mark.parametrize("scheme", SCHEMES)
@pytest.mark.parametrize("dtype", OUT_DTYPES)
def test_the_kernel_is_asked_for_the_codes_the_scales_and_the_output_dtype(tmp_path, recorder, scheme, dtype):
    fs = quant_set(tmp_path, scheme, (5, 16))
    src = fcuda.REGISTRY.device_pointer(fs, 0)
    plan = torch.from_numpy(fcuda.sorted_plan(np.array([9, 2, 9], dtype=np.int64)))
    out = torch.empty((3, 5, 16), dtype=dtype)
    fcuda.launch_gather(fs, src, plan, out, _Stream())
    ((name, args),) = recorder.launches
    assert name == "dequant_gather"
    codes, n_rows, row_elems, group, scales, rows, pos, n, out_ptr, got_scheme, out_name = args[:11]
    assert (codes, scales) == (src, src + fs.record.layout.scales_begin)
    assert (n_rows, row_elems, group, n) == (40, 80, 16, 3)
    assert (rows, pos, out_ptr) == (plan[0].data_ptr(), plan[1].data_ptr(), out.data_ptr())
    assert (got_scheme, out_name) == (scheme, str(dtype).removeprefix("torch."))


class _Stream:
    cuda_stream = 0


def test_a_raw_set_still_takes_the_raw_gather(tmp_path, recorder):
    from _util import make_store

    make_store(tmp_path, n_rows=10, row_shape=(8,))
    fs = FeatureStore.open(tmp_path)["enc/layer_1"]
    src = fcuda.REGISTRY.device_pointer(fs, 0)
    assert list(recorder.registered.values()) == [fs.nbytes]
    fcuda.launch_gather(fs, src, torch.from_numpy(fcuda.sorted_plan(np.arange(3))), torch.empty((3, 8)), _Stream())
    assert [name for name, _ in recorder.launches] == ["gather"]


def test_cuda_gather_output_dtypes(tmp_path):
    fs = quant_set(tmp_path, "int8")
    assert fcuda.out_dtype(fs) == torch.float16 and fcuda.out_dtype(fs, "float32") == torch.float32
    with pytest.raises(ValueError, match="enc/q.*quantised.*not torch.int8"):
        fcuda.out_dtype(fs, torch.int8)
    from _util import make_store

    make_store(tmp_path / "raw", n_rows=4, row_shape=(8,))
    raw = FeatureStore.open(tmp_path / "raw")["enc/layer_1"]
    assert fcuda.out_dtype(raw) == torch.float16
    with pytest.raises(ValueError, match=r"enc/layer_1.*raw.*\.to\(torch.float32\)"):
        fcuda.out_dtype(raw, torch.float32)


@pytest.mark.parametrize("row_shape", [(24,), (5, 16)])
def test_the_device_cache_holds_codes_and_scales_and_is_sized_by_them(tmp_path, row_shape):
    fs = quant_set(tmp_path, "float8_e4m3", row_shape)
    vectors = int(np.prod(row_shape[:-1], dtype=np.int64))
    assert held_bytes(fs) == fs.nbytes + 4 * len(fs) * vectors  # not 2 bytes an element (float16)
    held = dev.device_copy(fs, torch.device("cpu"))
    assert isinstance(held, dev.HeldCodes) and dev.device_copy(fs, torch.device("cpu")) is held
    assert held.nbytes == held_bytes(fs) and held.codes.dtype == torch.uint8
    assert torch.equal(held.codes.view(torch.float8_e4m3fn).view(fs.shape).float(), fs.to_torch().float())


@pytest.mark.parametrize("scheme", SCHEMES)
@pytest.mark.parametrize("row_shape", SHAPES)
def test_the_device_cache_fallback_dequantises_as_the_cpu_gather(tmp_path, scheme, row_shape):
    """Without the kernel the device cache dequantises with torch: here on the CPU, bit for bit."""
    fs = quant_set(tmp_path, scheme, row_shape)
    held = dev.HeldCodes(fs, torch.device("cpu"))
    idx = np.random.default_rng(1).integers(0, len(fs), 29).astype(np.int64)
    idx[:3] = [3, 3, 39]  # duplicates, the zero row, the last row
    plan = torch.from_numpy(np.stack([idx, np.arange(len(idx), dtype=np.int64)]))
    for dtype in OUT_DTYPES:
        got = dev.dequantise_held(fs, held, plan, dtype, None, kernel=False)
        assert same_bits(got, fs.gather(idx, dtype=dtype)), (scheme, row_shape, dtype)


def test_auto_sizes_a_quantised_set_by_what_is_held_and_takes_the_kernel_path(tmp_path, fake_gpu, recorder):
    fs = quant_set(tmp_path, "int8", (5, 16))
    held = held_bytes(fs) + 8 * len(fs)  # codes, scales and labels
    fake_gpu["bytes"] = 2 * held
    info = fs.batches(8, device="cuda:0").info
    assert info["path"] == "device" and info["set_bytes"] == held
    fake_gpu["bytes"] = 2 * held - 2
    info = fs.batches(8, device="cuda:0").info
    assert info["path"] == "uva" and "CUDA kernel" in info["why"]  # no longer refused for a quantised set
    assert fs.batches(8, device="cuda:0", cache="uva").info["path"] == "uva"


# ---- on a GPU (skipped here) --------------------------------------------------------------------
@needs_kernel
@pytest.mark.parametrize("scheme", SCHEMES)
@pytest.mark.parametrize("dtype", OUT_DTYPES)
@pytest.mark.parametrize(("group", "offset"), gpu_check_quant.CODE_LAYOUTS)
def test_every_code_dequantises_on_the_gpu_as_in_the_core(scheme, dtype, group, offset):
    """Every code (NaN, subnormal, signed zero) times scales of every size, from device memory."""
    assert gpu_check_quant.every_code_exact(scheme, dtype, group, offset)


@needs_kernel
@pytest.mark.parametrize("scheme", SCHEMES)
@pytest.mark.parametrize("row_shape", SHAPES)
def test_the_cuda_gather_of_a_quantised_set_is_bit_exact(tmp_path, scheme, row_shape):
    fs = quant_set(tmp_path, scheme, row_shape, n=300)
    idx = np.random.default_rng(2).integers(0, len(fs), 500).astype(np.int64)  # random order, duplicates
    for dtype in OUT_DTYPES:
        assert same_bits(fcuda.gather(fs, idx, dtype=dtype), fs.gather(idx, dtype=dtype)), dtype
    assert same_bits(fcuda.gather(fs, [5, 299]), fs.gather([5, 299]))


@needs_kernel
@pytest.mark.parametrize("cache", ["device", "uva"])
@pytest.mark.parametrize("scheme", SCHEMES)
def test_loader_paths_of_a_quantised_set_match_the_cpu_batches(tmp_path, cache, scheme):
    fs = quant_set(tmp_path, scheme, (5, 16), n=100)
    loader = fs.batches(16, shuffle=True, seed=3, device="cuda", cache=cache, prefetch=2)
    assert loader.info["path"] == cache
    cpu = list(fs.batches(16, shuffle=True, seed=3))
    got = list(loader)
    assert len(got) == len(cpu)
    for (x, y, rows), (cx, cy, crows) in zip(got, cpu, strict=True):
        assert same_bits(x, cx) and torch.equal(y.cpu(), cy) and torch.equal(rows, crows)


@needs_kernel
def test_the_device_cache_kernel_matches_its_torch_fallback_on_finite_codes(tmp_path):
    fs = quant_set(tmp_path, "float8_e4m3", (3, 7), n=64)
    held = dev.HeldCodes(fs, torch.device("cuda"))
    idx = np.random.default_rng(4).integers(0, 64, 50).astype(np.int64)
    plan = torch.from_numpy(np.stack([idx, np.arange(50, dtype=np.int64)])).cuda()
    stream = torch.cuda.current_stream()
    for dtype in OUT_DTYPES:
        by_kernel = dev.dequantise_held(fs, held, plan, dtype, stream, kernel=True)
        by_torch = dev.dequantise_held(fs, held, plan, dtype, stream, kernel=False)
        torch.cuda.synchronize()
        assert same_bits(by_kernel, by_torch) and same_bits(by_kernel, fs.gather(idx, dtype=dtype))


def test_an_empty_quantised_set_is_held_empty(tmp_path):
    store = FeatureStore.create(tmp_path)
    with store.create_feature_set("enc/e", 0, (2, 8), "float16", {}, quant="int8"):
        pass
    fs = store.refresh()["enc/e"]
    held = dev.HeldCodes(fs, torch.device("cpu"))
    assert held.codes.shape == (0, 16) and held.scales.shape == (0, 2) and held.nbytes == held_bytes(fs) == 0
