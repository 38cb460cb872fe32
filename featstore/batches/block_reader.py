"""How an assembler reads a batch's rows of one set: through the mapping, with direct reads, or, for
the block order read directly, through a small cache of whole blocks.

The block cache is the loader's own page reader (FFCV's ``os_cache=False``): a batch of the block
order falls in one window of a few blocks (two at a window's edge), so the cache reads each block
once, whole, in large sequential requests, and the batch is gathered from memory. When the loader
hands it the epoch's batches, a thread reads the blocks ahead, in the order the batches first need
them, while earlier batches are gathered. It holds
``2 * window_blocks + 2`` blocks (32-40 MiB at the defaults), whatever the size of the set; a batch
that needs more blocks than that (another order, a huge batch) is read row by row instead.
"""

from __future__ import annotations

import threading
import weakref
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
            self.load_into(missing, sorted(free)[: len(missing)])
        slot_of = np.array([self.slots[b] for b in wanted.tolist()], dtype=np.int64)
        local = slot_of[np.searchsorted(wanted, blocks)] * self.block_rows + (idx - blocks * self.block_rows)
        _backend.gather(self.arena, self.fs.row_bytes, local, byte_view(out))

    def load_into(self, blocks: list[int], slots: list[int]) -> None:
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


class _Ahead:
    """The state a read-ahead thread shares with its BlockReadAhead (never the owner itself, so the
    owner can be collected, which stops the thread)."""

    def __init__(self, cache: BlockCache, plan: list[np.ndarray], last_use: dict[int, int], sequence: list[int]):
        self.cache, self.plan, self.last_use, self.sequence = cache, plan, last_use, sequence
        self.cond = threading.Condition()
        self.loaded: dict[int, int] = {}  # block -> slot
        self.free = list(range(cache.n_slots))[::-1]
        self.k = 0  # the batch being served
        self.stop = False
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            for b in self.sequence:
                with self.cond:
                    while not self.free and not self.stop:
                        self.cond.wait(0.1)
                    if self.stop:
                        return
                    slot = self.free.pop()
                self.cache.load_into([b], [slot])
                with self.cond:
                    self.loaded[b] = slot
                    self.cond.notify_all()
        except BaseException as exc:  # handed to the reader, raised there
            with self.cond:
                self.error = exc
                self.cond.notify_all()


class BlockReadAhead:
    """The block order read directly, with the epoch's batches known: a thread reads the blocks in the
    order the batches first need them, into slots the batches already served have freed, so the disk
    keeps reading while batches are gathered from memory. Batches must come in the planned order; one
    that does not (or a plan that could not fit the slots) is read row by row."""

    def __init__(self, fs: FeatureSet, block_rows: int, n_slots: int, chunks: list[np.ndarray]):
        self.fs, self.block_rows, self.chunks = fs, block_rows, chunks
        self.cache = BlockCache(fs, block_rows, n_slots)
        plan = [np.unique(c // block_rows) for c in chunks]
        first: dict[int, int] = {}
        last: dict[int, int] = {}
        for k, blocks in enumerate(plan):
            for b in blocks.tolist():
                first.setdefault(b, k)
                last[b] = k
        alive = np.zeros(len(chunks) + 1, dtype=np.int64)
        for b, k in first.items():
            alive[k] += 1
            alive[last[b] + 1] -= 1
        self.ok = bool(len(chunks)) and int(np.cumsum(alive).max()) <= n_slots
        self.state = _Ahead(self.cache, plan, last, sorted(first, key=first.__getitem__))
        if self.ok:
            thread = threading.Thread(target=self.state.run, name="featstore-read-ahead", daemon=True)
            thread.start()
            weakref.finalize(self, _stop, self.state)

    def read(self, idx: np.ndarray, out: torch.Tensor) -> None:
        s = self.state
        k = s.k
        if not self.ok or k >= len(self.chunks) or idx is not self.chunks[k]:
            self.fs.gather_into(idx, out, read="direct")
            return
        blocks = s.plan[k]
        with s.cond:
            while s.error is None and not all(b in s.loaded for b in blocks.tolist()):
                s.cond.wait(0.1)
            if s.error is not None:
                raise s.error
            slot_of = np.array([s.loaded[b] for b in blocks.tolist()], dtype=np.int64)
        R = self.block_rows
        bid = idx // R
        local = slot_of[np.searchsorted(blocks, bid)] * R + (idx - bid * R)
        _backend.gather(self.cache.arena, self.fs.row_bytes, local, byte_view(out))
        with s.cond:
            s.k = k + 1
            for b in blocks.tolist():
                if s.last_use[b] <= k:
                    s.free.append(s.loaded.pop(b))
            s.cond.notify_all()


def _stop(state: _Ahead) -> None:
    with state.cond:
        state.stop = True
        state.cond.notify_all()


def reader(
    fs: FeatureSet, read: str, block_rows: int = 0, window_blocks: int = 0, plan: list[np.ndarray] | None = None
) -> Read:
    """The function that fills a batch buffer with rows of ``fs``: read "mmap" or "direct"; with
    ``block_rows`` (the block order) and "direct", through a :class:`BlockReadAhead` when the epoch's
    batches (``plan``) are known, else a :class:`BlockCache`."""
    if read == "direct" and block_rows and fs.quant is None:  # blocks hold raw rows; quantised sets gather
        if plan is not None:
            return BlockReadAhead(fs, block_rows, 2 * window_blocks + 2, plan).read
        return BlockCache(fs, block_rows, 2 * window_blocks + 2).read
    return lambda idx, out: fs.gather_into(idx, out, read=read)
