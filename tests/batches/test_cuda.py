"""featstore._cuda and featstore.cuda: the build switch and registration lifecycle (without a GPU),
then the kernel itself, its bounds checks, stream ordering and bit-exactness (skipped without one)."""

from __future__ import annotations

import gc
import importlib.util
import os
import shutil
import subprocess
import sys
import weakref
from pathlib import Path

import numpy as np
import pytest
import torch
from _util import make_store

import featstore.batches.cuda as fcuda
from featstore import FeatureStore
from featstore.errors import CudaUnavailableError

ROOT = Path(__file__).resolve().parents[2]


# ---- the build switch ------------------------------------------------------------------------
def test_status_says_whether_the_module_is_built_and_sees_a_gpu():
    st = fcuda.status()
    assert st.built == (importlib.util.find_spec("featstore._cuda") is not None)
    if not st.built:
        assert not st.usable and "featstore._cuda is not built" in st.why
    if not torch.cuda.is_available():
        assert st.devices == 0 and not st.usable and st.why  # e.g. no driver: reported, never raised


def configure(tmp_path, *defines, path=None) -> tuple[str, str]:
    """Configure the project's CMakeLists in a temp dir (no compile); returns (output, build.ninja)."""
    import pybind11

    env = dict(os.environ)
    env.pop("CUDACXX", None)
    if path is not None:
        env["PATH"] = path
    cmake = [
        shutil.which("cmake", path=str(Path(sys.executable).parent)) or "cmake",
        "-S",
        str(ROOT),
        "-B",
        str(tmp_path),
    ]
    cmd = cmake + ["-G", "Ninja", f"-Dpybind11_DIR={pybind11.get_cmake_dir()}", f"-DPython_EXECUTABLE={sys.executable}"]
    done = subprocess.run(cmd + list(defines), env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout, (tmp_path / "build.ninja").read_text()


needs_build_tools = pytest.mark.skipif(
    not (shutil.which("ninja", path=str(Path(sys.executable).parent)) or shutil.which("ninja"))
    or importlib.util.find_spec("pybind11") is None,
    reason="needs cmake, ninja and pybind11",
)


@needs_build_tools
def test_cmake_switch_off_gives_a_cpu_only_build(tmp_path):
    out, ninja = configure(tmp_path, "-DFEATSTORE_CUDA=OFF")
    assert "FEATSTORE_CUDA=OFF; CPU-only build" in out
    assert "target _core" in ninja and "target _cuda" not in ninja


@needs_build_tools
def test_cmake_without_a_cuda_compiler_gives_a_cpu_only_build(tmp_path):
    bins = {str(Path(sys.executable).parent), "/usr/bin", "/bin"}
    if any(shutil.which("nvcc", path=p) for p in bins):
        pytest.skip("nvcc lies in a system folder here")
    out, ninja = configure(tmp_path, path=os.pathsep.join(sorted(bins)))
    assert "no CUDA compiler found; CPU-only build" in out
    assert "target _cuda" not in ninja


@pytest.mark.skipif(importlib.util.find_spec("featstore._cuda") is None, reason="featstore._cuda is not built here")
def test_the_built_cuda_module_targets_ampere_and_hopper():
    # CMakeLists asks for 80-real;90-real;90-virtual; the fatbinary names each machine-code target.
    blob = Path(importlib.util.find_spec("featstore._cuda").origin).read_bytes()
    assert b"-arch sm_80" in blob and b"-arch sm_90" in blob


# ---- registration lifecycle, against a model of the driver -------------------------------------
def mapping_of(address: int) -> tuple[str, str]:
    """(permissions, file) of the mapping of this process that holds ``address`` (/proc/self/maps)."""
    for line in Path("/proc/self/maps").read_text().splitlines():
        fields = line.split(maxsplit=5)
        lo, hi = (int(x, 16) for x in fields[0].split("-"))
        if lo <= address < hi:
            return fields[1], fields[5] if len(fields) > 5 else ""
    raise AssertionError(f"{address:#x} is not mapped")


class FakeDriver:
    """featstore._cuda's registration calls over a table of registered addresses, as the driver keeps.

    It checks what the real driver cannot be asked on a CPU: a read-only registration is of a
    MAP_SHARED, read-only mapping of the file (Linux >= 6.2 would unshare a MAP_PRIVATE one into an
    anonymous copy when the driver pins it FOLL_LONGTERM), a plain one of a private writable mapping.
    """

    def __init__(self, read_only_ok: bool = True):
        self.read_only_ok = read_only_ok
        self.registered: dict[int, int] = {}
        self.calls: list[tuple[str, int]] = []
        self.devices: list[tuple[str, int]] = []
        self.perms: list[tuple[str, str]] = []

    def device_count(self):
        return 1, ""

    def read_only_register_supported(self, device):
        return self.read_only_ok

    def host_register(self, ptr, nbytes, read_only, device):
        assert read_only == self.read_only_ok, "read-only where supported, plain (copy mode) where not"
        self.perms.append(mapping_of(ptr))
        self.calls.append(("register", ptr))
        self.devices.append(("register", device))
        if ptr in self.registered:
            return False
        self.registered[ptr] = nbytes
        return True

    def host_unregister(self, ptr):
        self.calls.append(("unregister", ptr))
        return self.registered.pop(ptr, None) is not None

    def device_pointer(self, ptr, device):
        assert ptr in self.registered
        self.devices.append(("map", device))
        return ptr + (1 << 48) * (device + 1)

    def gather(self, src, n_rows, row_bytes, rows, pos, n, out, bad, device, stream):
        self.devices.append(("gather", device))


@pytest.fixture()
def driver():
    return FakeDriver()


@pytest.fixture()
def synced():
    return []


@pytest.fixture()
def registry(driver, synced):
    return fcuda.HostRegistry(driver, synchronize=synced.append)


@pytest.fixture()
def root(tmp_path):
    make_store(tmp_path, n_rows=50, row_shape=(32,))
    return tmp_path


def open_set(root):
    return FeatureStore.open(root)["enc/layer_1"]


def test_a_mapping_is_registered_once_and_unregistered_explicitly(root, registry, driver, synced):
    fs = open_set(root)
    assert fcuda._address(fs) % 4096 == 0
    p0 = registry.device_pointer(fs, 0)
    assert registry.device_pointer(fs, 0) == p0 and registry.device_pointer(fs, 1) != p0
    ((_, address),) = driver.calls
    assert address != fcuda._address(fs) and driver.registered == {address: fs.nbytes}
    assert fs in registry and len(registry) == 1 and registry.mode(fs) == "read-only"
    assert registry.pinned_bytes() == fs.nbytes and registry.pinned_bytes(exclude=[fs]) == 0
    assert registry.unregister(fs) and not registry.unregister(fs)
    assert driver.registered == {} and fs not in registry and registry.mode(fs) is None
    assert synced == [0, 1]  # the devices that used it, each once
    registry.device_pointer(fs, 0)  # registering again after an unregister works
    assert len(driver.registered) == 1


def test_read_only_registration_is_of_a_shared_read_only_mapping_of_the_file(root, registry, driver):
    """Finding 1: never the set's MAP_PRIVATE view, whose long-term pin would copy every page."""
    import ctypes

    fs = open_set(root)
    assert mapping_of(fcuda._address(fs))[0] == "rw-p"  # the set's own view: private, copy-on-write
    registry.device_pointer(fs, 0)
    (address,) = driver.registered
    assert driver.perms == [("r--s", str(fs.path))]
    assert ctypes.string_at(address, fs.nbytes) == bytes(fs.data)  # the set's feature bytes


def test_without_read_only_support_a_private_copy_is_registered_and_counted_twice(root, synced):
    """Finding 2: the kernel path stays on; the pinned copy is counted in the budget."""
    driver = FakeDriver(read_only_ok=False)
    registry = fcuda.HostRegistry(driver, synchronize=synced.append)
    assert fcuda.uva_support(torch.device("cuda", 0), driver) == (True, "")
    assert fcuda.register_mode(0, driver) == "copy"
    fs = open_set(root)
    registry.device_pointer(fs, 0)
    (address,) = driver.registered
    assert address != fcuda._address(fs)  # a mapping of its own, not the set's view
    assert driver.perms == [("rw-p", str(fs.path))]
    assert registry.mode(fs) == "copy" and registry.pinned_bytes() == 2 * fs.nbytes
    assert registry.unregister(fs) and driver.registered == {}


def test_release_waits_only_for_the_devices_used_and_unregisters_even_if_waiting_fails(root, driver):
    """Finding 5: no context is made on an unused GPU; a failed synchronize leaves nothing pinned."""

    def failing(device):
        synced.append(device)
        raise RuntimeError("CUDA error: an illegal memory access was encountered")

    synced: list[int] = []
    registry = fcuda.HostRegistry(driver, synchronize=failing)
    fs = open_set(root)
    registry.device_pointer(fs, 1)
    with pytest.raises(RuntimeError, match="illegal memory access"):
        registry.unregister(fs)
    assert synced == [1] and driver.registered == {} and len(registry) == 0


def test_device_indices_reach_every_call(root, registry, driver, monkeypatch):
    """The non-default device, by simulation: cuda:1 is what registration, mapping and the launch see."""
    fs = open_set(root)
    src = registry.device_pointer(fs, 1)
    monkeypatch.setattr(fcuda, "REGISTRY", registry)

    class Out:  # what launch_gather reads of the output tensor
        device = torch.device("cuda", 1)

        def data_ptr(self):
            return 1 << 20

    class Stream:
        cuda_stream = 7

    plan = torch.from_numpy(fcuda.sorted_plan(np.array([3, 1], dtype=np.int64)))
    fcuda.launch_gather(fs, src, plan, Out(), Stream())
    assert driver.devices == [("register", 1), ("map", 1), ("gather", 1)]
    assert fcuda.register_mode(torch.device("cuda", 1), driver) == "read-only"


def test_collecting_the_set_unregisters_before_its_pages_are_unmapped(root, registry, driver):
    fs = open_set(root)
    registry.device_pointer(fs, 0)
    entry = next(iter(registry._entries.values()))
    assert entry.mapped is fs.mapped_file  # the registration holds the mapping open
    del fs
    gc.collect()
    assert driver.registered == {} and len(registry) == 0 and entry.mapped is None


def test_a_stale_registration_at_a_reused_address_does_not_fail_the_next_run(root, registry, driver):
    first = open_set(root)
    registry.device_pointer(first, 0)
    (address,) = driver.registered
    next(iter(registry._entries.values())).finalizer.detach()  # as code that never unregistered
    registry._entries.clear()
    driver.registered[address] = first.nbytes
    del first
    gc.collect()
    again = open_set(root)
    registry.device_pointer(again, 0)  # the address may be the same; either way the run goes on
    ours = next(iter(registry._entries.values()))
    assert driver.registered[ours.address] == again.nbytes
    assert ours.replaced_stale == (ours.address == address)


def test_refused_registration_names_the_set_and_the_fallback(root, driver):
    def refuse(*args):
        raise RuntimeError("cudaHostRegister failed: cudaErrorNotSupported")

    driver.host_register = refuse
    with pytest.raises(CudaUnavailableError, match=r"enc/layer_1.*cudaErrorNotSupported.*cache='pinned'"):
        fcuda.HostRegistry(driver).device_pointer(open_set(root), 0)


def test_sorted_plan_sorts_rows_and_remembers_their_places():
    rows = np.array([7, 2, 9, 2, 0], dtype=np.int64)
    plan = fcuda.sorted_plan(rows)
    assert plan.dtype == np.int64 and plan.flags.c_contiguous
    assert plan[0].tolist() == [0, 2, 2, 7, 9]
    out = np.empty_like(rows)
    out[plan[1]] = plan[0]
    assert out.tolist() == rows.tolist()


def test_loaders_share_one_device_copy_of_a_set_while_any_holds_it(root):
    from featstore.batches import device_assemblers as device_batches

    fs, cpu = open_set(root), torch.device("cpu")  # the sharing logic is the same for any device
    a = device_batches.device_copy(fs, cpu)
    assert device_batches.device_copy(fs, cpu) is a and torch.equal(a, fs.to_torch())
    assert (id(fs), "cpu") in device_batches._device_copies
    del a
    gc.collect()
    assert (id(fs), "cpu") not in device_batches._device_copies


def test_a_freed_device_copy_does_not_evict_a_newer_sets_entry(root):
    """Finding 7: after id(fs) is reused, the old copy's weakref callback must leave the new entry."""
    from featstore.batches import device_assemblers as device_batches

    fs, cpu = open_set(root), torch.device("cpu")
    old = device_batches.device_copy(fs, cpu)
    key = (id(fs), "cpu")
    newer = torch.zeros(1)
    newer_refs = (weakref.ref(fs), weakref.ref(newer))
    device_batches._device_copies[key] = newer_refs  # what a newer set with the same id would leave
    del old
    gc.collect()
    assert device_batches._device_copies.get(key) is newer_refs
    del device_batches._device_copies[key]


def test_cache_and_labels_are_recorded_for_the_side_stream(root, monkeypatch):
    """Finding 6: tensors allocated on the consumer's stream and read on the side stream are
    record_stream-ed for it (simulated: the streams are stand-ins, the device is the CPU)."""
    from featstore.batches import device_assemblers as device_batches
    from featstore.batches.assemblers import BatchSpec

    class Stream:
        def __init__(self, device=None):
            pass

        def wait_stream(self, other):
            pass

    kept: list[tuple[torch.Tensor, object]] = []
    monkeypatch.setattr(torch.cuda, "Stream", Stream)
    monkeypatch.setattr(torch.cuda, "current_stream", lambda device=None: Stream())
    monkeypatch.setattr(
        device_batches._SideStreamAssembler, "keep_for_side_stream", lambda self, t: kept.append((t, self.stream))
    )
    fs = open_set(root)
    spec = BatchSpec({"a": fs}, 8, 1, fs.labels.numpy(), torch.device("cpu"), single=True)
    asm = device_batches.DeviceCacheAssembler(spec)
    kept_ids = {id(t) for t, stream in kept if stream is asm.stream}
    assert kept_ids == {id(asm.labels), id(asm.cache["a"])}
    kept.clear()
    monkeypatch.setattr(fcuda.REGISTRY, "device_pointer", lambda fs, device: 0)
    uva = device_batches.UvaAssembler(spec)  # the kernel path reads its labels on the side stream too
    assert [id(t) for t, stream in kept if stream is uva.stream] == [id(uva.labels)]


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the behaviour without CUDA")
def test_kernel_gather_without_cuda_says_what_to_do(root):
    with pytest.raises(CudaUnavailableError, match="use fs.gather"):
        fcuda.gather(open_set(root), [0, 1])


# ---- on a GPU ----------------------------------------------------------------------------------
# Two markers: the device cache and the pinned ring need only a CUDA GPU; the kernel path needs
# featstore._cuda too. (One marker over both hid the device-cache and pinned tests where the
# kernel path alone could not run.)
needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
gpu = pytest.mark.skipif(
    not (torch.cuda.is_available() and fcuda.status().usable and fcuda.uva_support(torch.device("cuda"))[0]),
    reason="needs a CUDA GPU and a usable featstore._cuda (the kernel path)",
)


def same_bits(a: torch.Tensor, b: torch.Tensor) -> bool:
    return a.shape == b.shape and a.dtype == b.dtype and torch.equal(a.cpu().view(torch.uint8), b.view(torch.uint8))


@gpu
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32])
@pytest.mark.parametrize("row_shape", [(64,), (3, 5), (1,)])
def test_kernel_gather_is_bit_exact(tmp_path, dtype, row_shape):
    store, _, _ = make_store(tmp_path, n_rows=301, row_shape=row_shape, dtype=dtype)
    fs = store["enc/layer_1"]
    rng = np.random.default_rng(0)
    for idx in ([0], [300], [300, 0, 0, 17], rng.integers(0, 301, 1000), -1, np.arange(301)[::-1]):
        assert same_bits(fcuda.gather(fs, idx), fs[idx])


@gpu
def test_kernel_bounds_checks(root):
    fs = open_set(root)
    with pytest.raises(IndexError, match="index 50 is out of bounds"):
        fcuda.gather(fs, [0, 50])
    assert same_bits(fcuda.gather(fs, [-1, -50]), fs[[49, 0]])  # numpy-style negatives
    # The kernel's own guard: an out-of-range row is skipped and flagged, nothing read past the end.
    mod, dev = fcuda.module(), torch.device("cuda", torch.cuda.current_device())
    plan = torch.tensor([[1, 50, -3], [0, 1, 2]], dtype=torch.int64, device=dev)
    out = torch.zeros((3, 32), dtype=fs.dtype, device=dev)
    bad = torch.zeros(1, dtype=torch.int32, device=dev)
    src = fcuda.REGISTRY.device_pointer(fs, dev.index)
    fcuda.launch_gather(fs, src, plan, out, torch.cuda.current_stream(dev), bad.data_ptr())
    assert bad.item() == 1
    assert same_bits(out[:1], fs[[1]]) and not out[1:].any()
    assert mod.device_count()[0] >= 1


@gpu
def test_kernel_runs_on_the_callers_stream(root):
    fs = open_set(root)
    fcuda.gather(fs, [0])  # register and warm up first: registration may synchronize the device
    torch.cuda.synchronize()
    side = torch.cuda.Stream()
    with torch.cuda.stream(side):
        torch.cuda._sleep(500_000_000)  # keeps `side` busy; the gather must queue behind it
        out = fcuda.gather(fs, [3, 1, 4])
        copy = out.clone()
        assert not side.query()
    assert torch.cuda.default_stream().query()  # nothing was put on the default stream
    side.synchronize()
    assert same_bits(copy, fs[[3, 1, 4]])


@gpu
def test_registration_lifecycle_on_the_device(root):
    mod = fcuda.module()
    fs = open_set(root)
    fcuda.gather(fs, [0])
    entry = fcuda.REGISTRY._entries[fcuda._address(fs)]
    address, read_only = entry.address, entry.mode == "read-only"
    assert fs in fcuda.REGISTRY
    assert mod.host_register(address, fs.nbytes, read_only, torch.cuda.current_device()) is False  # already
    assert fcuda.unregister(fs) and not mod.host_unregister(address)
    assert same_bits(fcuda.gather(fs, [5, 6]), fs[[5, 6]])  # registers again
    del fs
    gc.collect()
    for _ in range(3):  # reopen: the new mapping may reuse the address
        fs = open_set(root)
        assert same_bits(fcuda.gather(fs, [7, 49]), fs[[7, 49]])
        del fs
        gc.collect()


@needs_cuda
@pytest.mark.parametrize("cache", ["device", pytest.param("uva", marks=gpu), "pinned"])
def test_loader_paths_match_the_cpu_batches(tmp_path, cache):
    make_store(tmp_path, key="enc/a", n_rows=203, row_shape=(48,), dtype=torch.bfloat16, seed=1)
    make_store(tmp_path, key="enc/b", n_rows=203, row_shape=(3, 8), dtype=torch.float32, seed=2)
    store = FeatureStore.open(tmp_path)
    keys = ["enc/a", "enc/b"]
    expected = list(store.batches(keys, 32, seed=5))
    loader = store.batches(keys, 32, seed=5, device="cuda", cache=cache, prefetch=2)
    assert loader.info["path"] == cache
    consumer = torch.cuda.Stream()
    with torch.cuda.stream(consumer):
        got = list(loader)
    consumer.synchronize()
    assert len(got) == len(expected)
    for (x, y, r), (ex, ey, er) in zip(got, expected):
        assert torch.equal(r, er) and torch.equal(y.cpu(), ey)
        assert all(same_bits(x[k], ex[k]) for k in keys)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the behaviour without CUDA")
def test_gpu_check_refuses_without_cuda_and_writes_nothing(tmp_path):
    done = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "gpu_check.py"), "--no-install", "--out", str(tmp_path / "out")],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 2
    assert "no CUDA GPU" in done.stderr and "Nothing was written" in done.stderr
    assert not (tmp_path / "out").exists()


@gpu
def test_auto_on_a_gpu_caches_a_small_set_on_the_device_and_says_why(root):
    fs = open_set(root)
    info = fs.batches(16, device="cuda").info
    assert info["path"] == "device" and "fit in 0.5 of free GPU memory" in info["why"]
    assert info["free_bytes"] > info["set_bytes"] == fs.nbytes + 8 * len(fs)
    info = fs.batches(16, device="cuda", cache_share=1e-12).info  # too small a share: the kernel path
    assert info["path"] == "uva" and "exceed" in info["why"]
