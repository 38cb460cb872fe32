"""Batch assemblers for the "device" and "uva" paths of BatchLoader (see featstore.batches.device_paths).

Both work like the pinned path: the prefetch thread enqueues batch b+1.. on a side stream and
records an event; ``finish`` makes the consumer's stream wait on it. Labels go to the GPU once.

The device cache and the labels are allocated on the consumer's stream but read on the side
stream, so each is ``record_stream``-ed for the side stream (``keep_for_side_stream``): the caching
allocator does not reuse their memory while a queued side-stream read may still need it.
"""

from __future__ import annotations

import threading
import weakref

import numpy as np
import torch

from ..store import FeatureSet
from ..store.quant import group_elems
from . import cuda
from .assemblers import Batch, BatchSpec, finish_on_current_stream


class _SideStreamAssembler:
    """Shared by both paths: the side stream, labels on the device, and the index upload."""

    def __init__(self, spec: BatchSpec):
        self.spec = spec
        self.device = spec.device
        self.stream = torch.cuda.Stream(device=self.device)
        # Whatever the caller's stream did before (e.g. filling the cache) happens before our reads.
        self.stream.wait_stream(torch.cuda.current_stream(self.device))
        self.labels = None
        if spec.labels is not None:
            self.labels = torch.from_numpy(spec.labels).to(self.device)
            self.stream.wait_stream(torch.cuda.current_stream(self.device))
            self.keep_for_side_stream(self.labels)

    def keep_for_side_stream(self, tensor: torch.Tensor) -> None:
        """``tensor`` was allocated on another stream and is read on the side stream: tell the allocator."""
        tensor.record_stream(self.stream)

    def upload(self, array: np.ndarray) -> torch.Tensor:
        """An int64 host array on the device, copied asynchronously on the side stream (call inside it)."""
        return torch.from_numpy(array).pin_memory().to(self.device, non_blocking=True)

    def done(self, feats: dict[str, torch.Tensor], labels: torch.Tensor | None, idx: np.ndarray):
        event = torch.cuda.Event()
        event.record(self.stream)
        return Batch(self.spec.features(feats), labels, torch.from_numpy(idx)), event

    def finish(self, item) -> Batch:
        return finish_on_current_stream(item, self.device)


class HeldCodes:
    """A quantised set on the device as stored: ``codes`` (uint8, ``(N, row_bytes)``) and ``scales``
    (float32, ``(N, vectors per row)``); :func:`dequantise_held` makes a batch of it."""

    def __init__(self, fs: FeatureSet, device: torch.device):
        n, vectors = len(fs), fs.row_bytes // group_elems(fs.row_shape) if fs.row_bytes else 0
        self.codes = fs.to_torch().reshape(n, fs.row_bytes).view(torch.uint8).to(device)
        scales = fs.scales
        assert scales is not None
        self.scales = scales.reshape(n, vectors).to(device)

    @property
    def nbytes(self) -> int:
        return self.codes.nbytes + self.scales.nbytes


def dequantise_held(
    fs: FeatureSet, held: HeldCodes, plan: torch.Tensor, dtype: torch.dtype, stream, kernel: bool
) -> torch.Tensor:
    """Rows ``plan[0]`` of the quantised set ``fs`` held as ``held``, dequantised to ``dtype`` on the
    device: by the CUDA kernel (``kernel``: featstore._cuda usable), bit for bit as the CPU gather;
    else by a torch expression that is bit-exact for every finite value (float32(code) * scale, one
    rounding to ``dtype``) but may give a NaN code other NaN bits. ``plan``: (2, n), ``plan[1]`` = arange."""
    n = plan.shape[1]
    out = torch.empty((n, *fs.row_shape), dtype=dtype, device=held.codes.device)
    if kernel:
        cuda.launch_dequant(fs, held.codes.data_ptr(), held.scales.data_ptr(), plan, out, stream)
        return out
    codes = torch.index_select(held.codes, 0, plan[0]).view(fs.storage_dtype).to(torch.float32)
    picked = torch.index_select(held.scales, 0, plan[0])
    values = codes.view(n, picked.shape[1], -1) * picked.unsqueeze(-1)
    return out.copy_(values.view(out.shape))


Held = torch.Tensor | HeldCodes
_device_copies: dict[tuple[int, str], tuple[weakref.ref[FeatureSet], weakref.ref[Held]]] = {}
_copies_lock = threading.RLock()  # the weakref callback may run (collection) while held


def device_copy(fs: FeatureSet, device: torch.device) -> Held:
    """``fs`` on ``device``, shared by every loader that holds it (e.g. a probe's training and
    evaluation loaders): copied once, freed when the last holder drops it. A quantised set is held
    as its codes and scales (:class:`HeldCodes`)."""
    key = (id(fs), str(device))
    with _copies_lock:
        refs = _device_copies.get(key)
        if refs is not None and refs[0]() is fs:
            cached = refs[1]()  # one strong reference: a second call could find it collected
            if cached is not None:
                return cached
        held: Held = fs.to_torch().to(device) if fs.quant is None else HeldCodes(fs, device)
        _device_copies[key] = (weakref.ref(fs), weakref.ref(held, lambda ref: _forget(key, ref)))
        return held


def _forget(key: tuple[int, str], ref: weakref.ref) -> None:
    """A device copy was freed: drop its entry, unless a newer set (the id reused) has replaced it."""
    with _copies_lock:
        refs = _device_copies.get(key)
        if refs is not None and refs[1] is ref:
            del _device_copies[key]


class DeviceCacheAssembler(_SideStreamAssembler):
    """Holds every set on the GPU (copied once, reused across epochs and loaders); a batch is an
    index_select, or for a quantised set a dequantisation of its held codes (:func:`dequantise_held`)."""

    def __init__(self, spec: BatchSpec):
        self.cache = {key: device_copy(fs, spec.device) for key, fs in spec.sets.items()}
        super().__init__(spec)
        self.kernel = any(fs.quant is not None for fs in spec.sets.values()) and cuda.uva_support(spec.device)[0]
        for held in self.cache.values():
            for tensor in (held.codes, held.scales) if isinstance(held, HeldCodes) else (held,):
                self.keep_for_side_stream(tensor)

    def assemble(self, idx: np.ndarray):
        with torch.cuda.stream(self.stream):
            plan = self.upload(np.stack([idx, np.arange(len(idx), dtype=np.int64)]))
            rows, feats = plan[0], {}
            for key, held in self.cache.items():
                if isinstance(held, HeldCodes):
                    fs = self.spec.sets[key]
                    feats[key] = dequantise_held(fs, held, plan, fs.dtype, self.stream, self.kernel)
                else:
                    feats[key] = torch.index_select(held, 0, rows)
            labels = torch.index_select(self.labels, 0, rows) if self.labels is not None else None
            return self.done(feats, labels, idx)


class UvaAssembler(_SideStreamAssembler):
    """The CUDA kernel reads each batch's rows from the sets' registered file pages (featstore.batches.cuda)."""

    def __init__(self, spec: BatchSpec):
        self.sources = {key: cuda.REGISTRY.device_pointer(fs, spec.device.index) for key, fs in spec.sets.items()}
        super().__init__(spec)

    def assemble(self, idx: np.ndarray):
        n = len(idx)
        with torch.cuda.stream(self.stream):
            plan = self.upload(np.concatenate([cuda.sorted_plan(idx), idx[None]]))
            feats = {}
            for key, fs in self.spec.sets.items():
                feats[key] = torch.empty((n, *fs.row_shape), dtype=fs.dtype, device=self.device)
                cuda.launch_gather(fs, self.sources[key], plan[:2], feats[key], self.stream)
            labels = torch.index_select(self.labels, 0, plan[2]) if self.labels is not None else None
            return self.done(feats, labels, idx)
