"""featstore's CUDA module, from Python: is it built, does it see a GPU, and the kernel path.

``featstore._cuda`` (csrc/cuda_gather.cu) is built only where CMake finds a CUDA compiler and
``FEATSTORE_CUDA`` is not OFF; everything here works, and says why not, without it.

The kernel path ("uva"): a feature set's file is registered with CUDA once (``cudaHostRegister``,
mapped), and a kernel on the caller's stream reads the requested rows straight from those pages into
a device tensor: indices sorted so reads walk forward through the file, each row written to its
original position.

What is registered is a mapping of its own, never the set's copy-on-write (``MAP_PRIVATE``) view:

- "read-only" mode (``cudaDevAttrHostRegisterReadOnlySupported`` is 1): a ``MAP_SHARED``,
  ``PROT_READ`` mapping of the file, registered with ``cudaHostRegisterReadOnly``. The driver pins
  the file's page-cache pages themselves. (Pinning a ``MAP_PRIVATE`` mapping long-term,
  ``FOLL_LONGTERM``, would make Linux >= 6.2 unshare every page into new anonymous memory first: a
  pinned copy of the whole set on top of the page cache.)
- "copy" mode (read-only registration unsupported, e.g. some x86 machines): a plain registration
  needs write access, so a separate ``MAP_PRIVATE`` mapping is registered and the driver pins an
  anonymous copy of every page. That is safe (a committed file never changes, and the copy is
  private to the registration), but costs the set's bytes twice: :attr:`HostRegistry.pinned_bytes`
  and the "at most half the RAM" budget of ``cache="auto"`` count it so.

Registration lifecycle (``REGISTRY``): one registration per FeatureSet mapping, keyed by its address.
It holds that mapping and its own one open, and is undone by ``unregister(fs)`` or when the
FeatureSet is garbage-collected: it waits for the devices that used it, then unregisters (even if
waiting failed), then unmaps. An address the CUDA driver already holds (a registration left behind
by an earlier mapping at the same address) is unregistered and registered again, so a reused address
never fails the next run. The kernel reads the file, not private writes made to a set's views.
"""

from __future__ import annotations

import importlib
import mmap
import threading
import weakref
from collections.abc import Callable
from dataclasses import dataclass
from types import ModuleType
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from .._dtypes import TORCH_DTYPES, dtype_name
from ..errors import CudaUnavailableError
from ..indexing import normalize_rows
from ..store.quant import LOGICAL_DTYPES, group_elems

if TYPE_CHECKING:
    from ..store import FeatureSet

_REBUILD = (
    "featstore._cuda is not built: install with a CUDA compiler (nvcc) on PATH, "
    "`pip install --no-build-isolation -e .`, or use cache='pinned' / cache='auto'"
)


def module() -> ModuleType | None:
    """The compiled ``featstore._cuda`` module, or None where it was not built."""
    try:
        return importlib.import_module("featstore._cuda")
    except ImportError:
        return None


@dataclass(frozen=True)
class CudaStatus:
    """What the CUDA path can do here: ``built`` (featstore._cuda imports), ``devices`` (GPUs its
    runtime sees), ``why`` (empty when usable, else the reason, e.g. no driver)."""

    built: bool
    devices: int
    why: str

    @property
    def usable(self) -> bool:
        return self.built and self.devices > 0


def status() -> CudaStatus:
    """Whether the CUDA module is built and sees a GPU; never raises (no GPU is not an error)."""
    mod = module()
    if mod is None:
        return CudaStatus(False, 0, _REBUILD)
    count, why = mod.device_count()
    return CudaStatus(True, int(count), "" if count else f"the CUDA runtime sees no GPU ({why})")


def uva_support(device: torch.device, mod: ModuleType | None = None) -> tuple[bool, str]:
    """(ok, why not): can the kernel path run on ``device``? Needs the module and a GPU; where the
    device cannot register host memory read-only, it runs in "copy" mode (see :func:`register_mode`)."""
    mod = module() if mod is None else mod
    if mod is None:
        return False, _REBUILD
    count, why = mod.device_count()
    if not count:
        return False, f"the CUDA runtime of featstore._cuda sees no GPU ({why})"
    return True, ""


def register_mode(device: torch.device | int, mod: ModuleType | None = None) -> str:
    """How a set is registered on ``device``: "read-only" (a shared read-only mapping of the file, no
    copy) where ``cudaDevAttrHostRegisterReadOnlySupported`` is 1, else "copy" (a plain registration of
    a private mapping: the driver pins a copy of the set; it counts twice in the RAM budget)."""
    mod = module() if mod is None else mod
    if mod is None:
        raise CudaUnavailableError(_REBUILD)
    index = device if isinstance(device, int) else _device_index(device)
    return "read-only" if mod.read_only_register_supported(index) else "copy"


def _device_index(device: torch.device) -> int:
    return device.index if device.index is not None else torch.cuda.current_device()


def registered_bytes(fs: FeatureSet) -> int:
    """Bytes of ``fs``'s file that its registration pins: the feature rows, and for a quantised set
    everything from its codes to the end of its scales (the labels between them too)."""
    return fs.record.layout.data_bytes if fs.quant is not None else fs.nbytes


def _address(fs: FeatureSet) -> int:
    """Address of the first feature byte in the set's mapping (page-aligned: data starts at 4096)."""
    return np.frombuffer(fs.data, dtype=np.uint8).ctypes.data


def map_for_cuda(path: str, length: int, mode: str) -> tuple[mmap.mmap, int]:
    """A new mapping of the first ``length`` bytes of ``path`` and its address: ``MAP_SHARED`` +
    ``PROT_READ`` for "read-only" mode, ``MAP_PRIVATE`` (copy-on-write) for "copy" mode."""
    with open(path, "rb") as f:
        if mode == "read-only":
            mapping = mmap.mmap(f.fileno(), length, flags=mmap.MAP_SHARED, prot=mmap.PROT_READ)
        else:
            mapping = mmap.mmap(f.fileno(), length, access=mmap.ACCESS_COPY)
    view = np.frombuffer(mapping, dtype=np.uint8)
    address = int(view.ctypes.data)
    del view  # no export left, so the mapping can be closed
    return mapping, address


class _Registration:
    """One registered set: holds the set's mapping (our key) and the registered mapping open."""

    def __init__(self, mapped: Any, mapping: mmap.mmap, address: int, nbytes: int, mode: str, stale: bool):
        self.mapped = mapped  # the FeatureSet's mapping: its address (the key) is not reused meanwhile
        self.mapping: mmap.mmap | None = mapping  # what CUDA reads; unmapped only after unregistering
        self.address = address  # the registered address: the set's first feature byte in ``mapping``
        self.nbytes = nbytes
        self.mode = mode
        self.replaced_stale = stale
        self.device_pointers: dict[int, int] = {}
        self.finalizer: weakref.finalize | None = None

    @property
    def cost(self) -> int:
        """Host memory this registration holds: the pinned pages, twice in "copy" mode (the pinned
        anonymous copy, and the page cache the set's own reads keep)."""
        return self.nbytes * (2 if self.mode == "copy" else 1)

    def close(self) -> None:
        if self.mapping is not None:
            self.mapping.close()
        self.mapping = None
        self.mapped = None  # only now may the set's pages be unmapped


class HostRegistry:
    """Registers each FeatureSet's mapped feature bytes with CUDA once; see the module docstring.

    ``mod`` is the featstore._cuda module and ``synchronize`` waits for one device (both injectable,
    so the lifecycle logic is tested without a GPU).
    """

    def __init__(self, mod: ModuleType | None = None, synchronize: Callable[[int], None] | None = None):
        self._mod = mod
        self._synchronize = synchronize if synchronize is not None else torch.cuda.synchronize
        self._lock = threading.RLock()  # a finalizer may run (garbage collection) while it is held
        self._entries: dict[int, _Registration] = {}

    @property
    def mod(self) -> ModuleType:
        mod = self._mod if self._mod is not None else module()
        if mod is None:
            raise CudaUnavailableError(_REBUILD)
        return mod

    def __len__(self) -> int:
        return len(self._entries)

    def pinned_bytes(self, exclude=()) -> int:
        """Bytes of host memory registrations hold now (``_Registration.cost``: twice the set in "copy"
        mode), leaving out the feature sets in ``exclude``."""
        skip = {_address(fs) for fs in exclude if fs.nbytes > 0}
        return sum(e.cost for a, e in list(self._entries.items()) if a not in skip)

    def mode(self, fs: FeatureSet) -> str | None:
        """The registration mode of ``fs`` ("read-only" or "copy"), None when it is not registered."""
        entry = self._entries.get(_address(fs)) if fs.nbytes > 0 else None
        return entry.mode if entry is not None else None

    def __contains__(self, fs: FeatureSet) -> bool:
        return fs.nbytes > 0 and _address(fs) in self._entries

    def device_pointer(self, fs: FeatureSet, device: int) -> int:
        """The device address of ``fs``'s feature bytes on GPU ``device``, registering them first if
        needed. Raises CudaUnavailableError (naming the set) when CUDA refuses."""
        if fs.nbytes == 0:
            return 0
        address = _address(fs)
        with self._lock:
            entry = self._entries.get(address)
            if entry is None:
                entry = self._register(fs, address, device)
            if device not in entry.device_pointers:
                entry.device_pointers[device] = self._call(fs, "map", self.mod.device_pointer, entry.address, device)
            return entry.device_pointers[device]

    def _register(self, fs: FeatureSet, key: int, device: int) -> _Registration:
        mod = self.mod
        mode = "read-only" if mod.read_only_register_supported(device) else "copy"
        start, nbytes = fs.header.data_start, registered_bytes(fs)
        try:
            mapping, base = map_for_cuda(str(fs.path), start + nbytes, mode)
        except (OSError, ValueError) as exc:
            raise CudaUnavailableError(
                f"feature set {fs.key!r} ({fs.path}): could not map it for CUDA ({exc})"
            ) from None
        address, read_only = base + start, mode == "read-only"
        try:
            fresh = self._call(fs, "register", mod.host_register, address, nbytes, read_only, device)
            if not fresh:
                # The driver still holds this address from a mapping that is gone (we hold every mapping
                # we registered open, so it is not one of ours): drop the stale pages, register these.
                self._call(fs, "unregister a stale registration at", mod.host_unregister, address)
                if not self._call(fs, "register", mod.host_register, address, nbytes, read_only, device):
                    raise CudaUnavailableError(
                        f"feature set {fs.key!r}: its pages at {address:#x} stay registered by someone else; "
                        "use cache='pinned'"
                    )
        except BaseException:
            mapping.close()
            raise
        entry = _Registration(fs.mapped_file, mapping, address, nbytes, mode, stale=not fresh)
        entry.finalizer = weakref.finalize(fs, self._release, key)
        self._entries[key] = entry
        return entry

    def _call(self, fs: FeatureSet, what: str, fn, *args):
        try:
            return fn(*args)
        except RuntimeError as exc:
            raise CudaUnavailableError(
                f"feature set {fs.key!r} ({fs.path}): could not {what} its mapped pages with CUDA ({exc}); "
                "use cache='pinned' (or cache='auto', which falls back to it)"
            ) from None

    def unregister(self, fs: FeatureSet) -> bool:
        """Undo ``fs``'s registration now (True if it was registered)."""
        if fs.nbytes == 0:
            return False
        entry = self._entries.get(_address(fs))
        if entry is None or entry.finalizer is None:
            return False
        return bool(entry.finalizer())  # runs _release once, and never again at garbage collection

    def _release(self, key: int) -> bool:
        with self._lock:
            entry = self._entries.pop(key, None)
            if entry is None:
                return False
            try:
                # Kernels are asynchronous: one may still read these pages (a gather whose set was a
                # temporary, collected as the call returned). Wait for the devices that used them.
                for device in sorted(entry.device_pointers):
                    self._synchronize(device)
            finally:
                try:
                    self.mod.host_unregister(entry.address)
                except RuntimeError:
                    pass  # left registered: a later registration at this address replaces it (see _register)
                finally:
                    entry.close()
            return True


REGISTRY = HostRegistry()


def unregister(fs: FeatureSet) -> bool:
    """Release ``fs``'s CUDA registration now (it is released anyway when ``fs`` is collected)."""
    return REGISTRY.unregister(fs)


def sorted_plan(rows: np.ndarray) -> np.ndarray:
    """(2, n) int64: the rows in ascending order, and where each goes in the output (stable)."""
    order = np.argsort(rows, kind="stable")
    return np.stack([rows[order], order]).astype(np.int64, copy=False)


def launch_gather(
    fs: FeatureSet, src: int, plan: torch.Tensor, out: torch.Tensor, stream: torch.cuda.Stream, bad: int = 0
) -> None:
    """Enqueue the kernel on ``stream``: ``out[plan[1, k]] = fs[plan[0, k]]``. ``plan`` is a validated
    (2, n) int64 device tensor from sorted_plan, ``src`` the device pointer of ``fs``'s bytes. A
    quantised set's rows are dequantised to ``out``'s dtype, with the scales registered after its codes."""
    n = plan.shape[1]
    if n == 0 or fs.row_bytes == 0:
        return
    if fs.quant is not None:
        launch_dequant(fs, src, src + fs.record.layout.scales_begin, plan, out, stream, bad)
        return
    REGISTRY.mod.gather(
        src,
        len(fs),
        fs.row_bytes,
        plan[0].data_ptr(),
        plan[1].data_ptr(),
        n,
        out.data_ptr(),
        bad,
        out.device.index,
        stream.cuda_stream,
    )


def launch_dequant(
    fs: FeatureSet, codes: int, scales: int, plan: torch.Tensor, out: torch.Tensor, stream: torch.cuda.Stream, bad=0
) -> None:
    """Enqueue the dequantising kernel on ``stream``: ``out[plan[1, k]]`` = row ``plan[0, k]`` of the
    quantised set ``fs``, decoded from its codes at device address ``codes`` and its float32 scales at
    ``scales`` (registered file pages or device memory), rounded to ``out``'s dtype (float16,
    bfloat16 or float32) bit for bit as ``fs.gather`` does on the CPU."""
    assert fs.quant is not None
    n = plan.shape[1]
    if n == 0 or fs.row_bytes == 0:
        return
    REGISTRY.mod.dequant_gather(
        codes,
        len(fs),
        fs.row_bytes,
        group_elems(fs.row_shape),
        scales,
        plan[0].data_ptr(),
        plan[1].data_ptr(),
        n,
        out.data_ptr(),
        fs.quant.scheme,
        dtype_name(out.dtype),
        bad,
        out.device.index,
        stream.cuda_stream,
    )


def out_dtype(fs: FeatureSet, dtype=None) -> torch.dtype:
    """What a CUDA gather of ``fs`` returns for ``dtype``: the set's dtype by default; a quantised set
    dequantises to float16, bfloat16 or float32 (ValueError for another, or for a raw set's other dtype)."""
    want = fs.dtype if dtype is None else TORCH_DTYPES[dtype_name(dtype)]
    if fs.quant is not None and dtype_name(want) not in LOGICAL_DTYPES:
        raise ValueError(
            f"feature set {fs.key!r} is quantised; gathers return float16, bfloat16 or float32, not {want}"
        )
    if fs.quant is None and want != fs.dtype:
        raise ValueError(
            f"feature set {fs.key!r} holds {fs.dtype} rows and the CUDA gather copies them raw; "
            f"leave dtype unset and convert the result (.to({want}))"
        )
    return want


def gather(fs: FeatureSet, index, device: str | torch.device = "cuda", dtype=None) -> torch.Tensor:
    """Rows ``index`` (numpy-style) of ``fs`` as a new tensor on ``device``, gathered by the CUDA
    kernel straight from the set's registered file pages, on the current CUDA stream. A quantised
    set is dequantised in the kernel, to ``dtype`` (float16, bfloat16 or float32; default its logical
    dtype), bit for bit as ``fs.gather``.

    Indices are checked on the host before anything is launched (IndexError names the bad one).
    Raises CudaUnavailableError when there is no GPU or featstore._cuda is not built.
    """
    want = out_dtype(fs, dtype)
    device = torch.device(device)
    if device.type != "cuda" or not torch.cuda.is_available():
        raise CudaUnavailableError(
            f"featstore.batches.cuda.gather needs a CUDA device (got {str(device)!r}, "
            f"torch.cuda.is_available()={torch.cuda.is_available()}); use fs.gather() on the CPU"
        )
    ok, why = uva_support(device)
    if not ok:
        raise CudaUnavailableError(f"feature set {fs.key!r}: the CUDA gather cannot run: {why}")
    device = torch.device("cuda", _device_index(device))
    rows, lead = normalize_rows(index, len(fs))
    fs.check_committed(rows)
    out = torch.empty((len(rows), *fs.row_shape), dtype=want, device=device)
    if len(rows) and fs.row_bytes:
        src = REGISTRY.device_pointer(fs, device.index)
        stream = torch.cuda.current_stream(device)
        plan = torch.from_numpy(sorted_plan(rows)).pin_memory().to(device, non_blocking=True)
        launch_gather(fs, src, plan, out, stream)
    return out.view(*lead, *fs.row_shape)
