"""The loader's prefetching: batches assembled ahead on a thread while the caller trains, and on the
caller's own thread when it does not.

A prefetch thread only pays while the caller is away (training on the last batch). A caller that
comes straight back for the next batch (a fast step, or a benchmark) would instead wait on every
batch for the thread to be scheduled, hand it over and wake the caller: tens of microseconds a
batch on a busy machine, more than a warm gather of 1024 rows costs. So the caller assembles a batch
itself whenever none is ready and the thread has not started it, and it wakes the thread (starting
it the first time) when it leaves only if it stayed away longer than a batch takes to assemble the
previous time; so a loop that comes straight back never starts a thread. Either way
the batches are assembled one at a time, in order, by whichever thread claims the next one, so
the assembler needs no locking of its own and the epoch is the same batches in the same order.

Reads from disk are the exception (``concurrent``): a batch read directly spends its time waiting
on the disk, and the disk idles between one batch's last read and the next batch's first. There
two threads always work ahead, so two batches are read at once (the assembler must allow that:
the loader asks for it only for O_DIRECT page reads in random order, each thread on its own io_uring).
"""

from __future__ import annotations

import functools
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

from . import threads as background

Item = TypeVar("Item")
Out = TypeVar("Out")


class _Failed:
    def __init__(self, exc: BaseException):
        self.exc = exc


class _State:
    """What the caller and the thread share, under one lock (never the Prefetcher's caller)."""

    def __init__(self, n: int, ahead: int, concurrent: bool = False):
        self.cond = threading.Condition(threading.Lock())
        self.n, self.ahead, self.concurrent = n, ahead, concurrent
        self.claimed = 0  # batches claimed by either thread (claims go in order)
        self.served = 0  # batches handed to the caller
        self.ready: dict[int, Any] = {}  # assembled by the thread, not yet served
        self.away = False  # the caller is outside next()
        self.wanted = False  # the caller stays away long enough for the thread to pay (decided as it leaves)
        self.cost = 0.0  # seconds the last batch took to assemble, whichever thread did it
        self.stop = False


def prefetched(
    chunks: list,
    assemble: Callable[[Any], Item],
    finish: Callable[[Item], Out],
    ahead: int,
    concurrent: bool = False,
) -> Iterator[Out]:
    """``finish(assemble(c))`` for each of ``chunks`` in order, with up to ``ahead`` batches beyond
    the one the caller holds assembled by a thread while the caller is away (``ahead`` >= 1).

    ``concurrent``: assembling mostly waits on the disk, and ``assemble`` may run on several threads
    at once: two threads then always work ahead, whatever the caller does, so two batches' reads are
    in flight and the disk does not idle between one batch and the next."""
    state = _State(len(chunks), ahead, concurrent)
    running: list[threading.Thread] = []

    def start_threads() -> None:  # on first need: a caller that never leaves for long never starts one
        for _ in range(2 if concurrent else 1):
            stop = functools.partial(_halt, state)
            running.append(background.start(_produce, "featstore-prefetch", stop, (state, chunks, assemble)))

    if concurrent:
        start_threads()
    left = time.perf_counter()  # the first batch is the caller's: nothing says yet that it trains between batches
    try:
        for k in range(len(chunks)):
            away_for = time.perf_counter() - left
            with state.cond:
                state.away = False
                if k in state.ready:
                    item = state.ready.pop(k)
                elif state.claimed == k:
                    state.claimed += 1
                    item = None
                else:  # the thread is assembling it
                    while k not in state.ready:
                        state.cond.wait()
                    item = state.ready.pop(k)
            if item is None:
                t0 = time.perf_counter()
                item = assemble(chunks[k])
                state.cost = time.perf_counter() - t0
            elif isinstance(item, _Failed):
                raise item.exc
            with state.cond:
                state.served = k + 1
                state.away = True
                # the caller trains between batches: work while it does; else it assembles them itself
                state.wanted = away_for > state.cost or bool(state.ready)
                if state.wanted or concurrent:
                    if not running:
                        start_threads()
                    state.cond.notify_all()
            out = finish(item)
            left = time.perf_counter()
            yield out
    finally:
        _halt(state)
        for thread in running:
            thread.join()


def _halt(state: _State) -> None:
    """Make the prefetch threads of ``state`` return once their current batch is assembled."""
    with state.cond:
        state.stop = True
        state.cond.notify_all()


def _produce(state: _State, chunks: list, assemble: Callable[[Any], Any]) -> None:
    while True:
        with state.cond:
            while not state.stop and not (
                (state.concurrent or (state.away and state.wanted))
                and state.claimed < state.n
                and state.claimed - state.served < state.ahead
            ):
                state.cond.wait()
            if state.stop:
                return
            k = state.claimed
            state.claimed += 1
        t0 = time.perf_counter()
        try:
            item: Any = assemble(chunks[k])
        except BaseException as exc:  # handed to the caller, raised when it reaches batch k
            item = _Failed(exc)
        with state.cond:
            state.cost = time.perf_counter() - t0
            state.ready[k] = item
            state.cond.notify_all()
        if isinstance(item, _Failed):
            return
