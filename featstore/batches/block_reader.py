"""How an assembler reads a batch's rows of one set: through the mapping, with direct reads, or, for
the block order read directly, through a small cache of whole blocks.

The block cache is the loader's own page reader (FFCV's ``os_cache=False``): a batch of the block
order falls in one window of a few blocks (two at a window's edge), so the cache reads each block
once, whole, in large sequential requests, and the batch is gathered from memory. When the loader
hands it the epoch's batches, two threads read the blocks ahead, in the order the batches first need
them, while earlier batches are gathered. It holds
``2 * window_blocks + 2`` blocks (32-40 MiB at the defaults), whatever the size of the set; a batch
that needs more blocks than that (another order, a huge batch) is read row by row instead.
"""

from __future__ import annotations

import functools
import math
import threading
import weakref
from collections import OrderedDict
from collections.abc import Callable

import numpy as np
import torch

from .. import _backend
from .._dtypes import byte_view
from ..store import FeatureSet
from ..store.direct import MIN_PIECE_BYTES, PAGE, aligned_buffer
from ..store.memory import AutoRead
from . import threads

Read = Callable[[np.ndarray, torch.Tensor], None]
BLOCK_REQUEST_BYTES = 1 << 20  # a block is read as several requests in flight
# The read-ahead: READ_AHEAD_THREADS threads, each reading up to READ_AHEAD_BLOCKS blocks (as slots free
# up) in one call, so while one waits for its reads to finish and for slots, the other's are in flight.
# Measured (patch-grid int8 block cells, 4 paired runs): 2 x 2 read 14% more rows/s than 1 x 4.
READ_AHEAD_BLOCKS = 2
READ_AHEAD_THREADS = 2


class BlockCache:
    """Whole blocks of ``block_rows`` file rows of ``fs``, read directly, kept least-recently-used.

    Where the filesystem allows it, blocks are read with O_DIRECT (:meth:`DirectReader.read_spans`):
    the page cache is bypassed, which under a memory cgroup saves the kernel's reclaim and copy
    (measured: 2x the sequential rate at a tenth of the system CPU, docs/performance.md). A block then
    sits in its slot at whatever offset its file position has within a page, so batches are gathered
    from the arena in pieces of ``unit`` bytes (the largest that divides every row's offset).
    """

    def __init__(self, fs: FeatureSet, block_rows: int, n_slots: int):
        self.fs, self.block_rows, self.n_slots = fs, block_rows, n_slots
        rb = fs.row_bytes
        self.unit = math.gcd(PAGE, rb)
        self.o_direct = self.unit >= MIN_PIECE_BYTES and fs.direct.direct_fd() is not None
        span = block_rows * rb
        self.slot_bytes = -(-span // PAGE) * PAGE + PAGE if self.o_direct else span
        if not self.o_direct:
            self.unit = rb
        self.arena = aligned_buffer(n_slots * self.slot_bytes)
        self.slots: OrderedDict[int, int] = OrderedDict()  # block -> slot, oldest use first
        self.row0 = np.zeros(n_slots, dtype=np.int64)  # where the first row of each slot's block sits in the arena
        self.blocks_read = 0
        self._books = threading.Lock()

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
        self.gather(idx, blocks, wanted, np.array([self.slots[b] for b in wanted.tolist()], dtype=np.int64), out)

    def gather(self, idx: np.ndarray, blocks: np.ndarray, wanted: np.ndarray, slot_of: np.ndarray, out) -> None:
        """Copy rows ``idx`` (in ``blocks``; ``wanted`` the sorted unique blocks, in slots ``slot_of``) to ``out``."""
        rb, unit = self.fs.row_bytes, self.unit
        at = self.row0[slot_of[np.searchsorted(wanted, blocks)]] + (idx - blocks * self.block_rows) * rb
        pieces = rb // unit
        if pieces > 1:
            at = (at // unit)[:, None] + np.arange(pieces, dtype=np.int64)
        else:
            at = at // unit
        pieces_at = np.ascontiguousarray(at.reshape(-1))
        if self.fs.quant is None:
            _backend.gather(self.arena, unit, pieces_at, byte_view(out))
            return
        codes = np.empty(len(idx) * rb, dtype=np.uint8)  # the codes, then dequantised with their rows' scales
        _backend.gather(self.arena, unit, pieces_at, codes)
        self.fs.dequantise_codes(codes, idx, out, read="direct")

    def load_into(self, blocks: list[int], slots: list[int]) -> None:
        """Read ``blocks`` into ``slots`` with one direct read, so every block's requests are in
        flight together (the disk needs many MiB in flight to stream at its sequential rate)."""
        R, n, rb = self.block_rows, len(self.fs), self.fs.row_bytes
        if self.o_direct:
            start = self.fs.direct.data_start
            spans = [(start + b * R * rb, start + min(n, b * R + R) * rb) for b in blocks]
            landed = self.fs.direct.read_spans(
                spans, self.arena, [s * self.slot_bytes for s in slots], BLOCK_REQUEST_BYTES
            )
            self.row0[slots] = landed
        elif blocks:
            rows, pos = [], []
            for b, s in zip(blocks, slots, strict=True):
                count = min(n, b * R + R) - b * R
                rows.append(np.arange(b * R, b * R + count, dtype=np.int64))
                pos.append(np.arange(s * R, s * R + count, dtype=np.int64))
            self.fs.direct.read(
                np.concatenate(rows), self.arena, max_request_bytes=BLOCK_REQUEST_BYTES, pos=np.concatenate(pos)
            )
            self.row0[slots] = np.asarray(slots, dtype=np.int64) * self.slot_bytes
        with self._books:  # two read-ahead threads load blocks at once
            for b, s in zip(blocks, slots, strict=True):
                self.slots[b] = s
            self.blocks_read += len(blocks)


class _Ahead:
    """The state a read-ahead thread shares with its BlockReadAhead (never the owner itself, so the
    owner can be collected, which stops the thread)."""

    def __init__(self, cache: BlockCache, plan: list[np.ndarray], last_use: dict[int, int], sequence: list[int]):
        self.cache, self.plan, self.last_use, self.sequence = cache, plan, last_use, sequence
        self.cond = threading.Condition()
        self.loaded: dict[int, int] = {}  # block -> slot
        self.free = list(range(cache.n_slots))[::-1]
        self.k = 0  # the batch being served
        self.next_block = 0  # the first block of the sequence no read-ahead thread has claimed
        self.stop = False
        self.error: BaseException | None = None

    def run(self) -> None:
        """Read the next blocks no reader has claimed, as slots free up, until every block is read."""
        try:
            sequence = self.sequence
            while True:
                with self.cond:
                    while not self.free and not self.stop and self.next_block < len(sequence):
                        self.cond.wait(0.1)
                    if self.stop or self.next_block >= len(sequence):
                        return
                    i = self.next_block
                    take = min(len(self.free), READ_AHEAD_BLOCKS, len(sequence) - i)
                    slots = [self.free.pop() for _ in range(take)]
                    self.next_block = i + take
                blocks = sequence[i : i + take]
                self.cache.load_into(blocks, slots)
                with self.cond:
                    self.loaded.update(zip(blocks, slots, strict=True))
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
            for _ in range(READ_AHEAD_THREADS):
                threads.start(self.state.run, "featstore-read-ahead", stop=functools.partial(_stop, self.state))
            weakref.finalize(self, _stop, self.state)

    def read(self, idx: np.ndarray, out: torch.Tensor) -> None:
        s = self.state
        k = s.k
        if not self.ok or k >= len(self.chunks) or idx is not self.chunks[k]:
            self.fs.gather_into(idx, out, read="direct")
            return
        blocks = s.plan[k]
        with s.cond:
            while s.error is None and not s.stop and not all(b in s.loaded for b in blocks.tolist()):
                s.cond.wait(0.1)
            if s.error is not None:
                raise s.error
            if s.stop:
                raise RuntimeError(
                    f"the block read-ahead of {self.fs.path} was stopped (featstore.batches.threads.stop_all, "
                    "which runs at exit); start a new epoch to read on"
                )
            slot_of = np.array([s.loaded[b] for b in blocks.tolist()], dtype=np.int64)
        self.cache.gather(idx, idx // self.block_rows, blocks, slot_of, out)
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
    fs: FeatureSet,
    read: str,
    block_rows: int = 0,
    window_blocks: int = 0,
    plan: list[np.ndarray] | None = None,
    auto: AutoRead | None = None,
) -> Read:
    """The function that fills a batch buffer with rows of ``fs``: read "mmap" or "direct"; with
    ``block_rows`` (the block order) and "direct", through a :class:`BlockReadAhead` when the epoch's
    batches (``plan``) are known, else a :class:`BlockCache`. ``auto``: an mmap choice that rests on
    cached pages, asked before each batch (it turns direct within a second of the pages going)."""
    if auto is not None:
        return _asking(fs, auto, block_rows, window_blocks)
    if read == "direct" and block_rows:  # blocks hold the stored rows (a quantised set's codes)
        if plan is not None:
            return BlockReadAhead(fs, block_rows, 2 * window_blocks + 2, plan).read
        return BlockCache(fs, block_rows, 2 * window_blocks + 2).read
    return lambda idx, out: fs.gather_into(idx, out, read=read)


def _asking(fs: FeatureSet, auto: AutoRead, block_rows: int, window_blocks: int) -> Read:
    """A reader that asks ``auto`` which path to take before each batch. Once it turns direct in the
    block order, the rest of the epoch reads whole blocks through a :class:`BlockCache` (made then:
    the read-ahead needs the epoch's plan from its start), not row by row."""
    cache: list[BlockCache] = []

    def read(idx: np.ndarray, out: torch.Tensor) -> None:
        path = auto.path()
        if path == "direct" and block_rows:
            if not cache:
                cache.append(BlockCache(fs, block_rows, 2 * window_blocks + 2))
            cache[0].read(idx, out)
        else:
            fs.gather_into(idx, out, read=path)

    return read
