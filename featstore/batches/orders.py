"""The orders an epoch can visit rows in: ``random`` (a uniform permutation) and ``block``.

``random`` is numpy's ``default_rng([seed, epoch]).permutation(n)``, drawn by the compiled core at
2.1-3.4x numpy's speed, the same permutation bit for bit (``uniform_permutation``;
benchmarks/micro_permutation.py). numpy's 2.4-3.4 ms for 262,144 rows is 7-10% of a warm epoch of
1024-row gathers of 768-d float16 rows on a 2-core machine, and the loader, which must draw it, is
held to 5% over the bare gather (docs/performance.md).

``block`` is a quasi-random order for sets far larger than memory, in the manner of FFCV's
``QUASI_RANDOM``: the rows (sorted) are cut into blocks of ``block_rows`` contiguous rows (about
``block_bytes`` of every set together), the blocks are shuffled, and then the rows are shuffled
within each window of ``window_blocks`` consecutive blocks of that sequence. So the reader touches
one window (a few MiB) at a time, each block once, in large sequential reads, where a uniform
permutation touches a page of the whole set per row.

Each rank serves its share of the same order as the random order's shares are cut: padded by
wrapping around (or, with ``drop_last``, cut) to a multiple of ``world_size``, every rank the same
number of rows, the shares disjoint but for the padding and together every row. A block order's share
is a contiguous piece of the epoch's order (``order[rank * per:(rank + 1) * per]``), so each rank
reads its own blocks instead of every rank reading every block.
"""

from __future__ import annotations

import functools
import os
import threading
from collections.abc import Callable

import numpy as np

from .. import _backend
from . import threads

ORDERS = ("random", "block")
DEFAULT_BLOCK_BYTES = 4 << 20
DEFAULT_WINDOW_BLOCKS = 4
_BLOCK_STREAM = 0xB10C  # keeps the block order's random stream apart from the permutation's


def uniform_permutation(n: int, seed: int, epoch: int) -> np.ndarray:
    """``np.random.default_rng([seed, epoch]).permutation(n)``, drawn by the compiled core when it draws
    exactly what numpy draws (checked once per process and backend), else by numpy."""
    rng = np.random.default_rng([seed, epoch])
    if n > _MAX_FAST_PERMUTATION or not _backend_agrees_with_numpy(_backend.name()):
        return rng.permutation(n)
    return _permute(rng, n)


_MAX_FAST_PERMUTATION = 1 << 32  # beyond, numpy's first draws are 64-bit ones (csrc/permutation.h)


def _permute(rng: np.random.Generator, n: int) -> np.ndarray:
    state = rng.bit_generator.state
    out = np.empty(n, dtype=np.int64)
    _backend.permute_pcg64(out, state["state"]["state"], state["state"]["inc"], state["has_uint32"], state["uinteger"])
    return out


@functools.cache
def _backend_agrees_with_numpy(backend: str) -> bool:
    """Whether ``backend``'s permutation is numpy's on a few sizes (a numpy that changed its shuffle, or a
    bit generator other than PCG64 behind default_rng, would fail it: then numpy draws every order)."""
    for n in (1, 2, 3, 1000, 5003):
        rng = np.random.default_rng([n, 7])
        if rng.bit_generator.state.get("bit_generator") != "PCG64":
            return False
        if not np.array_equal(_permute(rng, n), np.random.default_rng([n, 7]).permutation(n)):
            return False
    return True


def block_rows_for(row_bytes: int, block_bytes: int = DEFAULT_BLOCK_BYTES) -> int:
    """Rows per block: ``block_bytes`` of rows of ``row_bytes`` bytes (every set's row together), at least 1."""
    if isinstance(block_bytes, bool) or not isinstance(block_bytes, int) or block_bytes < 1:
        raise ValueError(f"block_bytes must be a positive integer, got {block_bytes!r}")
    return max(1, block_bytes // max(1, row_bytes))


def block_order(rows: np.ndarray, seed: int, epoch: int, block_rows: int, window_blocks: int) -> np.ndarray:
    """The block order of ``rows`` for ``(seed, epoch)``: the same on every rank, each row once.

    Built a window at a time, so drawing it takes the order's own memory and one window's more (a
    loader draws the next epoch's while this one's batches are in flight)."""
    if block_rows < 1 or window_blocks < 1:
        raise ValueError(f"block_rows and window_blocks must be >= 1, got {block_rows} and {window_blocks}")
    rows = np.asarray(rows)
    base = rows if len(rows) < 2 or bool((rows[1:] >= rows[:-1]).all()) else np.sort(rows)
    n = len(base)
    rng = np.random.default_rng([seed, epoch, _BLOCK_STREAM])
    n_blocks = -(-n // block_rows)
    starts = (rng.permutation(n_blocks) * block_rows).tolist()
    out = np.empty(n, dtype=base.dtype)
    at = 0
    for w in range(0, n_blocks, window_blocks):  # whole blocks a window (the short last block too)
        seq = np.concatenate([np.arange(s, min(n, s + block_rows)) for s in starts[w : w + window_blocks]])
        key = rng.random(len(seq))  # the same stream as one draw of n keys, a window's worth at a time
        out[at : at + len(seq)] = base[seq[sorted_positions(key)]]
        at += len(seq)
    return out


def sorted_positions(key: np.ndarray) -> np.ndarray:
    """``np.argsort(key, kind="stable")``, faster: numpy's default sort, kept where no two keys tie (then
    it is the stable order, whatever sorting kernel numpy picks on this machine, so every rank agrees)."""
    order = np.argsort(key)
    if len(key) > 1 and not bool((np.diff(key[order]) > 0).all()):
        order = np.argsort(key, kind="stable")
    return order


def block_share(order: np.ndarray, rank: int, world_size: int, drop_last: bool = False) -> np.ndarray:
    """Rank ``rank``'s contiguous share of a block order (equal sizes, padded by wrapping or cut)."""
    if world_size == 1:
        return order
    n = len(order)
    per = n // world_size if drop_last else -(-n // world_size)
    if per * world_size > n and n:
        order = np.resize(order, per * world_size)  # wraps around, as the random order's padding does
    return np.ascontiguousarray(order[rank * per : (rank + 1) * per])


class OrderAhead:
    """An epoch's order drawn on a background thread, so a loader has it when that epoch starts.

    Drawing a random order costs ~5 ns a row (1.2 ms for 262,144 rows; numpy alone 9-25 ns), a block
    order of 1.1M rows ~40 ms. The core's permutation, numpy's shuffle and sorts release the GIL, so
    the thread draws it while the caller trains on the previous epoch. The thread runs at
    the lowest CPU priority (Linux: niceness 19, this thread only), so where the caller pauses it takes
    only time the gathers leave idle.
    """

    def __init__(self, draw: Callable[[int], np.ndarray], epoch: int):
        self.epoch = epoch
        self._done = threading.Event()
        self._order: np.ndarray | None = None
        self._error: BaseException | None = None
        threads.start(self._run, "featstore-order", stop=_nothing, args=(draw,))  # a draw ends on its own

    def _run(self, draw: Callable[[int], np.ndarray]) -> None:
        try:
            os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), 19)
        except (AttributeError, OSError):  # not Linux: a normal-priority thread
            pass
        try:
            self._order = draw(self.epoch)
        except BaseException as exc:  # raised to the loader when it takes the order
            self._error = exc
        finally:
            self._done.set()

    def result(self) -> np.ndarray:
        """The order (waits for the thread); raises what drawing it raised."""
        self._done.wait()
        if self._error is not None:
            raise self._error
        assert self._order is not None
        return self._order


def _nothing() -> None:
    pass
