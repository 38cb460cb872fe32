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
BLOCK_REQUEST_BYTES = 1 << 20  # a block is read as several requests in flight


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
        missing = [b for b in wanted.tolist() if b not in self.slots]
        if missing:
            used = set(self.slots.values())
            free = [s for s in range(self.n_slots) if s not in used]
            while len(free) < len(missing):
                old = next(k for k in self.slots if k not in keep)
                free.append(self.slots.pop(old))
            self._load(missing, sorted(free)[: len(missing)])
        slot_of = np.array([self.slots[b] for b in wanted.tolist()], dtype=np.int64)
        local = slot_of[np.searchsorted(wanted, blocks)] * self.block_rows + (idx - blocks * self.block_rows)
        _backend.gather(self.arena, self.fs.row_bytes, local, byte_view(out))

    def _load(self, blocks: list[int], slots: list[int]) -> None:
        """Read ``blocks`` into ``slots`` (sorted): one direct read per run of consecutive slots, so
        the blocks of a window are read with all their requests in flight together."""
        R, n, rb = self.block_rows, len(self.fs), self.fs.row_bytes
        runs: list[list[tuple[int, int]]] = []
        for b, s in zip(blocks, slots, strict=True):
            last = runs[-1][-1] if runs else None
            # a run goes on in the next slot, after a whole block (the set's last block may be short)
            if last is not None and last[1] == s - 1 and (last[0] + 1) * R <= n:
                runs[-1].append((b, s))
            else:
                runs.append([(b, s)])
        for run in runs:
            rows = np.concatenate([np.arange(b * R, min(n, b * R + R), dtype=np.int64) for b, _ in run])
            start = run[0][1] * self.slot_bytes
            self.fs.direct.read(rows, self.arena[start : start + len(rows) * rb], max_request_bytes=BLOCK_REQUEST_BYTES)
            for b, s in run:
                self.slots[b] = s
            self.blocks_read += len(run)


def reader(fs: FeatureSet, read: str, block_rows: int = 0, window_blocks: int = 0) -> Read:
    """The function that fills a batch buffer with rows of ``fs``: read "mmap" or "direct"; with
    ``block_rows`` (the block order) and "direct", through a :class:`BlockCache`."""
    if read == "direct" and block_rows:
        return BlockCache(fs, block_rows, 2 * window_blocks + 2).read
    return lambda idx, out: fs.gather_into(idx, out, read=read)
