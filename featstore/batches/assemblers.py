"""How one batch is made from its row numbers, on the CPU and through pinned buffers to a CUDA device.

An assembler has two steps: ``assemble(idx)`` runs on the prefetch thread (the gather, the async
copy) and ``finish(item)`` on the consumer's thread (make its CUDA stream wait for the batch).
"""

from __future__ import annotations

import threading
import weakref
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np
import torch

from .. import _backend
from ..store import FeatureSet
from ..store.memory import AutoRead
from .block_reader import Read, reader


class Batch(NamedTuple):
    """One batch: features (a tensor, or a dict key -> tensor for several sets), labels, row numbers."""

    features: torch.Tensor | dict[str, torch.Tensor]
    labels: torch.Tensor | None
    indices: torch.Tensor


@dataclass(frozen=True)
class BatchSpec:
    """What an assembler needs of its loader: the sets, the batch size, the labels and the device."""

    sets: dict[str, FeatureSet]
    batch_size: int
    prefetch: int
    labels: np.ndarray | None
    device: torch.device
    single: bool  # one set: a batch's features are its tensor, not a dict
    read: str = "mmap"  # how the CPU gathers read the files: "mmap" or "direct"
    block_rows: int = 0  # the block order's rows per block (0: another order)
    window_blocks: int = 0
    plan: list[np.ndarray] | None = None  # the epoch's batches, in order (for reading ahead)
    auto: AutoRead | None = None  # read="auto" chose mmap on cached pages: asked again as the epoch runs

    def readers(self) -> dict[str, Read]:
        """Each set's function that fills a batch buffer with its rows (key -> ``read(idx, out)``)."""
        return {
            k: reader(fs, self.read, self.block_rows, self.window_blocks, self.plan, self.auto)
            for k, fs in self.sets.items()
        }

    def features(self, tensors: dict[str, torch.Tensor]) -> torch.Tensor | dict[str, torch.Tensor]:
        """The ``features`` field of a batch made of ``tensors`` (key -> tensor)."""
        return next(iter(tensors.values())) if self.single else tensors


class RecyclingBuffers:
    """Batch buffers reused once the caller has dropped every tensor and view of them.

    Allocating a fresh multi-MB tensor per batch costs page faults on every batch; a plain ring
    would overwrite batches the caller still holds. Each batch is a tensor made with
    ``torch.from_numpy`` over a fresh numpy view of a buffer: torch keeps that view alive exactly as
    long as any tensor or view of the batch lives, so a weak reference to it says when the buffer is
    free again. Only public torch and Python APIs are involved.
    """

    def __init__(self, row_shape: tuple[int, ...], dtype: torch.dtype, batch_size: int, limit: int):
        self.row_shape, self.dtype, self.limit = row_shape, dtype, limit
        self.row_bytes = int(np.prod(row_shape, dtype=np.int64)) * torch.empty((), dtype=dtype).element_size()
        self.batch_bytes = batch_size * self.row_bytes
        self.buffers: list[np.ndarray] = []
        self.leases: list[weakref.ref | None] = []
        self._lock = threading.Lock()  # two threads may take buffers at once (concurrent direct reads)

    def take(self, n: int) -> torch.Tensor:
        """An uninitialised ``(n, *row_shape)`` tensor over a buffer nobody holds."""
        with self._lock:
            for slot, lease in enumerate(self.leases):
                if lease is None or lease() is None:
                    return self._lend(slot, n)
            if len(self.buffers) < self.limit:
                self.buffers.append(np.empty(max(1, self.batch_bytes), dtype=np.uint8))
                self.leases.append(None)
                return self._lend(len(self.buffers) - 1, n)
        return torch.empty((n, *self.row_shape), dtype=self.dtype)  # every buffer is held: a fresh tensor

    def _lend(self, slot: int, n: int) -> torch.Tensor:
        view = self.buffers[slot][: n * self.row_bytes]
        self.leases[slot] = weakref.ref(view)
        return torch.from_numpy(view).view(self.dtype).view(n, *self.row_shape)


class CpuAssembler:
    """Gathers each batch into a buffer nobody else holds, so a batch the caller keeps stays valid.
    ``buffers``: those of the loader's previous epoch, reused (fresh ones cost a page fault per 4 KiB)."""

    def __init__(self, spec: BatchSpec, buffers: dict[str, RecyclingBuffers] | None = None):
        self.spec = spec
        limit = spec.prefetch + 3  # queued + being filled + held by the caller + one spare
        self.buffers = buffers or {
            k: RecyclingBuffers(fs.row_shape, fs.dtype, spec.batch_size, limit) for k, fs in spec.sets.items()
        }
        self.readers = spec.readers()

    def assemble(self, idx: np.ndarray) -> Batch:
        feats = {}
        for key, read in self.readers.items():
            out = self.buffers[key].take(len(idx))
            read(idx, out)
            feats[key] = out
        labels = None
        if self.spec.labels is not None:
            labels = torch.from_numpy(gather_labels(self.spec.labels, idx, np.empty(len(idx), np.int64)))
        return Batch(self.spec.features(feats), labels, torch.from_numpy(idx))

    def finish(self, batch: Batch) -> Batch:
        return batch


def gather_labels(labels: np.ndarray, idx: np.ndarray, out: np.ndarray) -> np.ndarray:
    """``labels[idx]`` into ``out`` (int64) by the compiled gather: it prefetches the rows far ahead
    and splits big batches across threads, 2-3x numpy's fancy indexing beside the feature gathers
    (each label is a cache miss once those have gone through the caches)."""
    _backend.gather(labels, 8, idx, out)
    return out


class PinnedAssembler:
    """Gathers into a ring of pinned buffers and copies to the device on a side stream; a CUDA event
    per slot keeps a buffer from being refilled while its copy is in flight."""

    def __init__(self, spec: BatchSpec):
        self.spec = spec
        self.device = spec.device
        self.stream = torch.cuda.Stream(device=self.device)
        n_slots = spec.prefetch + 1
        bs = spec.batch_size
        self.host = [
            {k: torch.empty((bs, *fs.row_shape), dtype=fs.dtype, pin_memory=True) for k, fs in spec.sets.items()}
            for _ in range(n_slots)
        ]
        self.host_labels = [torch.empty(bs, dtype=torch.int64, pin_memory=True) for _ in range(n_slots)]
        self.copied: list[torch.cuda.Event | None] = [None] * n_slots
        self.next_slot = 0
        self.readers = spec.readers()

    def assemble(self, idx: np.ndarray) -> tuple[Batch, torch.cuda.Event]:
        slot = self.next_slot
        self.next_slot = (slot + 1) % len(self.host)
        previous = self.copied[slot]
        if previous is not None:
            previous.synchronize()  # the slot's previous copy has left the buffer
        n = len(idx)
        host = {}
        for key, read in self.readers.items():
            host[key] = self.host[slot][key][:n]
            read(idx, host[key])
        host_labels = None
        if self.spec.labels is not None:
            host_labels = self.host_labels[slot][:n]
            gather_labels(self.spec.labels, idx, host_labels.numpy())
        with torch.cuda.stream(self.stream):
            dev = {k: torch.empty(t.shape, dtype=t.dtype, device=self.device) for k, t in host.items()}
            for k, t in host.items():
                dev[k].copy_(t, non_blocking=True)
            dev_labels = None
            if host_labels is not None:
                dev_labels = torch.empty(n, dtype=torch.int64, device=self.device)
                dev_labels.copy_(host_labels, non_blocking=True)
            done = torch.cuda.Event()
            done.record(self.stream)
        self.copied[slot] = done
        return Batch(self.spec.features(dev), dev_labels, torch.from_numpy(idx)), done

    def finish(self, item: tuple[Batch, torch.cuda.Event]) -> Batch:
        return finish_on_current_stream(item, self.device)


def finish_on_current_stream(item: tuple[Batch, torch.cuda.Event], device: torch.device) -> Batch:
    """Hand a batch made on a side stream to the consumer: its stream waits for the batch's event."""
    batch, done = item
    current = torch.cuda.current_stream(device)
    current.wait_event(done)
    tensors = list(batch.features.values()) if isinstance(batch.features, dict) else [batch.features]
    if batch.labels is not None:
        tensors.append(batch.labels)
    for t in tensors:
        t.record_stream(current)  # the allocator must not reuse them before the consumer is done
    return batch
