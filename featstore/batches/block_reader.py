"""How an assembler reads a batch's rows of one set: through the mapping, with direct reads, or, for
the block order read directly, through a small cache of whole blocks.

The block cache is the loader's own page reader (FFCV's ``os_cache=False``): a batch of the block
order falls in one window of a few blocks (two at a window's edge), so the cache reads each block
once, whole, in large sequential requests, and the batch is gathered from memory. It holds
``2 * window_blocks + 2`` blocks (32-40 MiB at the defaults), whatever the size of the set; a batch
that needs more blocks than that (another order, a huge batch) is read row by row instead.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable

import numpy as np
import torch

from .. import _backend
from .._dtypes import byte_view
from ..store import FeatureSet

Read = Callable[[np.ndarray, torch.Tensor], None]
BLOCK_REQUEST_BYTES = 512 << 10  # a block is read as several requests in flight


class BlockCache:
    """Whole blocks of ``block_rows`` file rows of ``fs``, read directly, kept least-recently-used."""

    def __init__(self, fs: FeatureSet, block_rows: int, n_slots: int):
        self.fs, self.block_rows, self.n_slots = fs, block_rows, n_slots
        self.slot_bytes = block_rows * fs.row_bytes
        self.arena = np.empty(max(1, n_slots * self.slot_bytes), dtype=np.uint8)
        self.slots: OrderedDict[int, int] = OrderedDict()  # block -> slot, oldest use first
        self.blocks_read = 0

    def read(self, idx: np.ndarray, out: torch.Tensor) -> None:
        blocks = idx // self.block_rows
        wanted = np.unique(blocks)
        if len(wanted) > self.n_slots:
            self.fs.gather_into(idx, out, read="direct")
            return
        keep = set(wanted.tolist())
        for b in wanted.tolist():
            if b in self.slots:
                self.slots.move_to_end(b)
        free = [s for s in range(self.n_slots) if s not in set(self.slots.values())]
        for b in wanted.tolist():
            if b in self.slots:
                continue
            if not free:
                old = next(k for k in self.slots if k not in keep)
                free.append(self.slots.pop(old))
            slot = free.pop()
            self._load(b, slot)
            self.slots[b] = slot
        slot_of = np.array([self.slots[b] for b in wanted.tolist()], dtype=np.int64)
        local = slot_of[np.searchsorted(wanted, blocks)] * self.block_rows + (idx - blocks * self.block_rows)
        _backend.gather(self.arena, self.fs.row_bytes, local, byte_view(out))

    def _load(self, block: int, slot: int) -> None:
        first = block * self.block_rows
        rows = np.arange(first, min(len(self.fs), first + self.block_rows), dtype=np.int64)
        view = self.arena[slot * self.slot_bytes : slot * self.slot_bytes + len(rows) * self.fs.row_bytes]
        self.fs.direct.read(rows, view, max_request_bytes=BLOCK_REQUEST_BYTES)
        self.blocks_read += 1


def reader(fs: FeatureSet, read: str, block_rows: int = 0, window_blocks: int = 0) -> Read:
    """The function that fills a batch buffer with rows of ``fs``: read "mmap" or "direct"; with
    ``block_rows`` (the block order) and "direct", through a :class:`BlockCache`."""
    if read == "direct" and block_rows:
        return BlockCache(fs, block_rows, 2 * window_blocks + 2).read
    return lambda idx, out: fs.gather_into(idx, out, read=read)
