"""featstore.batches.prefetch: batches in order, each assembled once by one thread at a time; the thread
works while the caller is away, the caller assembles when it comes straight back."""

from __future__ import annotations

import threading
import time

import pytest
import torch

from featstore.batches.prefetch import prefetched

torch.set_num_threads(1)


class Recorder:
    """A fake assembler: notes which thread assembled each chunk, and that none overlapped."""

    def __init__(self, seconds: float = 0.0, fail_at: int | None = None):
        self.seconds, self.fail_at = seconds, fail_at
        self.by: dict[int, str] = {}
        self.busy = threading.Lock()
        self.overlapped = False
        self.served = 0
        self.most_ahead = 0

    def assemble(self, k: int) -> int:
        if not self.busy.acquire(blocking=False):
            self.overlapped = True
            self.busy.acquire()
        try:
            self.by[k] = threading.current_thread().name
            self.most_ahead = max(self.most_ahead, k - self.served)
            if k == self.fail_at:
                raise OSError(f"disk on fire at {k}")
            time.sleep(self.seconds)
            return k
        finally:
            self.busy.release()


@pytest.mark.parametrize("away", [0.0, 0.01])
def test_batches_come_in_order_each_assembled_once_never_two_at_a_time(away):
    rec = Recorder(seconds=0.002)
    got = []
    for k in prefetched(list(range(30)), rec.assemble, lambda x: x * 10, ahead=3):
        got.append(k)
        rec.served = len(got)
        time.sleep(away)
    assert got == [k * 10 for k in range(30)]
    assert sorted(rec.by) == list(range(30)) and not rec.overlapped
    assert rec.most_ahead <= 3  # never more than `ahead` beyond the batch the caller holds


def test_a_caller_that_trains_between_batches_gets_them_from_the_thread():
    rec = Recorder(seconds=0.001)
    for _ in prefetched(list(range(20)), rec.assemble, lambda x: x, ahead=2):
        time.sleep(0.02)  # a training step, 20x the assembly
    by_thread = sum(name == "featstore-prefetch" for name in rec.by.values())
    assert by_thread >= 15, rec.by


def test_a_caller_that_comes_straight_back_assembles_its_batches_itself():
    rec = Recorder(seconds=0.002)
    for _ in prefetched(list(range(40)), rec.assemble, lambda x: x, ahead=2):
        pass  # no training step: a thread hand-off per batch would only add its wake-ups
    by_caller = sum(name == threading.current_thread().name for name in rec.by.values())
    assert by_caller >= 30, rec.by


def test_concurrent_batches_are_read_two_at_a_time_and_still_in_order():
    """concurrent=True (reads that wait on the disk): two threads work ahead of a caller that comes
    straight back, so batches overlap; each is assembled once and they arrive in order."""

    class Overlapping(Recorder):
        def __init__(self):
            super().__init__(seconds=0.005)
            self.running = 0
            self.most_at_once = 0
            self.count = threading.Lock()

        def assemble(self, k):
            with self.count:
                self.running += 1
                self.most_at_once = max(self.most_at_once, self.running)
            self.by[k] = threading.current_thread().name
            time.sleep(self.seconds)  # waiting on the disk
            with self.count:
                self.running -= 1
            return k

    rec = Overlapping()
    got = list(prefetched(list(range(40)), rec.assemble, lambda x: x, ahead=3, concurrent=True))
    assert got == list(range(40)) and sorted(rec.by) == list(range(40))
    assert 2 <= rec.most_at_once <= 3  # two threads read ahead (the caller may take one itself)


@pytest.mark.parametrize("away", [0.0, 0.01])
def test_an_error_reaches_the_caller_at_its_batch(away):
    rec = Recorder(fail_at=5)
    got = []
    with pytest.raises(OSError, match="disk on fire at 5"):
        for k in prefetched(list(range(10)), rec.assemble, lambda x: x, ahead=2):
            got.append(k)
            time.sleep(away)
    assert got == [0, 1, 2, 3, 4]
    assert not any(t.name == "featstore-prefetch" and t.is_alive() for t in threading.enumerate())


def test_leaving_early_stops_the_thread():
    rec = Recorder(seconds=0.001)
    for k in prefetched(list(range(100)), rec.assemble, lambda x: x, ahead=4):
        time.sleep(0.005)
        if k == 3:
            break
    assert not any(t.name == "featstore-prefetch" and t.is_alive() for t in threading.enumerate())
    assert max(rec.by) <= 3 + 4 + 1  # it stopped within `ahead` of where the caller left
