"""The device-path policy (featstore.batches.device_paths) and its fallbacks, checked without a GPU."""

from __future__ import annotations

import pytest
import torch
from _util import make_store

import featstore.batches.cuda as fcuda
from featstore.batches.device_paths import DEFAULT_DEVICE_SHARE, choose_path, device_share
from featstore.errors import CudaUnavailableError

MB = 2**20
GPU = dict(device_type="cuda", cuda_ok=True)


def auto(set_bytes, free_bytes, share=0.5, uva_ok=True, uva_why=""):
    return choose_path(
        "auto", **GPU, set_bytes=set_bytes, free_bytes=free_bytes, share=share, uva_ok=uva_ok, uva_why=uva_why
    )


def test_auto_prefers_the_device_cache_while_the_sets_fit_the_share():
    assert auto(100 * MB, 1000 * MB).path == "device"
    assert auto(500 * MB, 1000 * MB).path == "device"  # exactly the share still fits
    assert auto(501 * MB, 1000 * MB).path == "uva"
    assert auto(501 * MB, 1000 * MB, share=0.9).path == "device"
    assert auto(100 * MB, 1000 * MB, share=0.05).path == "uva"
    assert "fit in 0.5 of free GPU memory" in auto(100 * MB, 1000 * MB).why


def test_auto_falls_back_to_pinned_without_the_kernel_path():
    choice = auto(900 * MB, 1000 * MB, uva_ok=False, uva_why="featstore._cuda is not built")
    assert choice.path == "pinned"
    assert "exceed" in choice.why and "featstore._cuda is not built" in choice.why
    assert auto(10 * MB, 1000 * MB, uva_ok=False).path == "device"


def test_auto_does_not_pin_more_than_half_of_the_ram_for_the_kernel_path():
    facts = dict(**GPU, free_bytes=1000 * MB, share=0.5, uva_ok=True)
    assert choose_path("auto", **facts, set_bytes=600 * MB, host_bytes=1200 * MB).path == "uva"
    choice = choose_path("auto", **facts, set_bytes=601 * MB, host_bytes=1200 * MB)
    assert choice.path == "pinned" and "pin more than half of the RAM" in choice.why
    assert choose_path("uva", **facts, set_bytes=2000 * MB, host_bytes=1200 * MB).path == "uva"  # asked for
    # what other sets' registrations pin already counts too (a sweep over many layers keeps each one)
    choice = choose_path("auto", **facts, set_bytes=550 * MB, host_bytes=1200 * MB, pinned_bytes=51 * MB)
    assert choice.path == "pinned" and "51.0 MiB pinned by other sets" in choice.why
    assert choose_path("auto", **facts, set_bytes=550 * MB, host_bytes=1200 * MB, pinned_bytes=50 * MB).path == "uva"


def test_copy_mode_registration_counts_the_sets_twice():
    """Without read-only registration the driver pins a copy of the set: half the RAM holds half as much."""
    facts = dict(**GPU, free_bytes=100 * MB, share=0.5, uva_ok=True, host_bytes=1200 * MB)
    assert choose_path("auto", **facts, set_bytes=300 * MB, uva_copies=True).path == "uva"
    choice = choose_path("auto", **facts, set_bytes=301 * MB, uva_copies=True)
    assert choice.path == "pinned" and "twice the sets" in choice.why
    assert choose_path("auto", **facts, set_bytes=301 * MB).path == "uva"  # read-only: counted once


def test_explicit_modes_are_honoured_or_refused_with_a_reason():
    facts = dict(**GPU, set_bytes=10 * MB, free_bytes=MB, share=0.5)
    assert choose_path("device", **facts, uva_ok=False).path == "device"
    assert choose_path("pinned", **facts, uva_ok=True).path == "pinned"
    assert choose_path("uva", **facts, uva_ok=True).path == "uva"
    with pytest.raises(CudaUnavailableError, match="cache='uva' cannot run here: no read-only registration"):
        choose_path("uva", **facts, uva_ok=False, uva_why="no read-only registration")
    with pytest.raises(ValueError, match="cache must be one of"):
        choose_path("gpu", **facts, uva_ok=True)


def test_cpu_device_and_missing_cuda():
    cpu = dict(set_bytes=MB, free_bytes=0, share=0.5, uva_ok=False)
    assert choose_path("auto", device_type="cpu", cuda_ok=False, **cpu).path == "cpu"
    for mode in ("device", "uva", "pinned"):
        with pytest.raises(ValueError, match="pass device='cuda'"):
            choose_path(mode, device_type="cpu", cuda_ok=False, **cpu)
        with pytest.raises(CudaUnavailableError, match="use device=None"):
            choose_path(mode, device_type="cuda", cuda_ok=False, **cpu)


def test_device_share_from_argument_environment_or_default(monkeypatch):
    monkeypatch.delenv("FEATSTORE_DEVICE_CACHE_SHARE", raising=False)
    assert device_share(None) == DEFAULT_DEVICE_SHARE == 0.5
    assert device_share(0.25) == 0.25
    monkeypatch.setenv("FEATSTORE_DEVICE_CACHE_SHARE", "0.8")
    assert device_share(None) == 0.8
    for bad in (0, 1.5, -0.1, True, "half"):
        with pytest.raises(ValueError, match="cache_share must be a number in"):
            device_share(bad)
    monkeypatch.setenv("FEATSTORE_DEVICE_CACHE_SHARE", "lots")
    with pytest.raises(ValueError, match="FEATSTORE_DEVICE_CACHE_SHARE"):
        device_share(None)


@pytest.fixture()
def fs(tmp_path):
    store, _, _ = make_store(tmp_path, n_rows=64, row_shape=(16,))  # 2 KiB of features + 512 B labels
    return store["enc/layer_1"]


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the behaviour without CUDA")
def test_loader_without_cuda(fs):
    assert fs.batches(8).info["path"] == "cpu"
    assert fs.batches(8, cache="auto").info["path"] == "cpu"
    with pytest.raises(ValueError, match="pass device='cuda'"):
        fs.batches(8, cache="pinned")
    for mode in ("auto", "device", "uva", "pinned"):
        with pytest.raises(CudaUnavailableError, match=f"cache='{mode}'.*torch.cuda.is_available"):
            fs.batches(8, device="cuda", cache=mode)


def test_loader_auto_reports_what_it_picked_and_why(fs, fake_gpu, monkeypatch):
    monkeypatch.setattr(fcuda, "module", lambda: None)  # as in a build without nvcc
    fake_gpu["bytes"] = 1 * MB
    info = fs.batches(8, device="cuda:0").info
    assert info["path"] == "device" and info["set_bytes"] == 64 * 16 * 2 + 64 * 8
    assert info["free_bytes"] == MB and info["share"] == 0.5
    fake_gpu["bytes"] = 4096
    info = fs.batches(8, device="cuda:0", cache_share=0.5).info
    assert info["path"] == "pinned" and "featstore._cuda is not built" in info["why"]
    with pytest.raises(CudaUnavailableError, match="featstore._cuda is not built.*nvcc"):
        fs.batches(8, device="cuda:0", cache="uva")


class RefusingModule:
    """A featstore._cuda stand-in whose driver refuses to register anything."""

    def device_count(self):
        return 1, ""

    def read_only_register_supported(self, device):
        return True

    def host_register(self, ptr, nbytes, read_only, device):
        raise RuntimeError("cudaHostRegister failed: cudaErrorMemoryAllocation")


def test_loader_auto_falls_back_to_pinned_when_registration_fails(fs, fake_gpu, monkeypatch):
    mod = RefusingModule()
    monkeypatch.setattr(fcuda, "module", lambda: mod)
    monkeypatch.setattr(fcuda, "REGISTRY", fcuda.HostRegistry(mod))
    fake_gpu["bytes"] = 1024
    info = fs.batches(8, device="cuda:0").info
    assert info["path"] == "pinned"
    assert "registration failed" in info["why"] and "cudaErrorMemoryAllocation" in info["why"]
    with pytest.raises(CudaUnavailableError, match="enc/layer_1.*could not register"):
        fs.batches(8, device="cuda:0", cache="uva")
