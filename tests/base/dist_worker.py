"""Run by tests/base/test_distributed.py under torchrun (2 CPU processes, gloo), in one launch to save start-up
time: ``featstore.extract`` inside the process group, then a check that ``fs.batches`` takes its rank and
world size from the group (every epoch's shares disjoint and complete across ranks), then
``featstore probe`` with the remaining arguments.

    python -m torch.distributed.run --standalone --nproc_per_node=2 tests/base/dist_worker.py \\
        EXTRACT_JSON PROBE_STORE probe --store PROBE_STORE ...
"""

import json
import sys

import numpy as np
import torch
import torch.distributed as dist

torch.set_num_threads(1)

import featstore  # noqa: E402
from featstore import FeatureStore  # noqa: E402
from featstore.cli import main  # noqa: E402
from featstore.distributed import ensure_process_group  # noqa: E402


def check_epoch_shares(store: str, key: str) -> None:
    ranks = ensure_process_group("cpu")
    fs = FeatureStore.open(store)[key]
    assert len(fs) % ranks.world_size == 0, "the check needs rows that divide evenly (no padding)"
    for epoch in range(2):
        loader = fs.batches(16, seed=3, epoch=epoch, prefetch=0)
        assert loader.ranks == ranks
        mine = np.concatenate([b.indices.numpy() for b in loader]).tolist()
        shares: list = [None] * ranks.world_size
        dist.all_gather_object(shares, mine)
        assert sorted(r for share in shares for r in share) == list(range(len(fs))), (
            f"epoch {epoch}: shares not disjoint and complete"
        )


if __name__ == "__main__":
    ranks = ensure_process_group("cpu")
    extract_args = json.loads(sys.argv[1])
    result = featstore.extract(**extract_args)
    if ranks.is_main:
        print(f"extract: {result.summary()}")
    check_epoch_shares(sys.argv[2], "toy/layer_1/cls")
    sys.exit(main(sys.argv[3:]))


def failing_rank(rank: int, port: int, report) -> None:
    """Spawned by test_distributed.py: rank 0 fails a step that every rank waits for, then rank 1 stays
    alive without joining the next collective. Each rank reports what it saw to ``report`` (a queue)."""
    import os
    import time

    from featstore.distributed import barrier, on_main

    os.environ.update(
        WORLD_SIZE="2",
        RANK=str(rank),
        LOCAL_RANK=str(rank),
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(port),
        FEATSTORE_DIST_TIMEOUT_S="3",
    )
    ranks = ensure_process_group("cpu")

    def take_sets() -> None:
        raise ValueError("cannot take the feature sets")

    try:
        on_main(ranks, take_sets)
    except Exception as exc:
        report.put((rank, type(exc).__name__, str(exc)))
    if rank == 1:
        time.sleep(60)  # alive but gone quiet: rank 0 must not wait for it beyond the timeout
        return
    start = time.perf_counter()
    try:
        barrier(ranks)
    except Exception as exc:
        report.put((rank, "barrier", f"{type(exc).__name__} after {time.perf_counter() - start:.0f} s"))


def rank_failing_in_a_loop(rank: int, port: int, report) -> None:
    """Spawned by test_distributed.py: both ranks run rounds of all_sum_or_fail; rank 1 fails in round 2
    and tells rank 0 at its next collective, as an extraction's share loop does."""
    import os

    from featstore.distributed import all_sum_or_fail

    os.environ.update(
        WORLD_SIZE="2",
        RANK=str(rank),
        LOCAL_RANK=str(rank),
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(port),
        FEATSTORE_DIST_TIMEOUT_S="30",
    )
    ranks = ensure_process_group("cpu")
    sums = []
    try:
        for round_ in range(5):
            if rank == 1 and round_ == 2:
                try:
                    raise OSError("image 7 is unreadable")
                except OSError as exc:
                    all_sum_or_fail(ranks, 0, exc)
                    raise
            sums.append(all_sum_or_fail(ranks, round_ + 1))
    except Exception as exc:
        report.put((rank, type(exc).__name__, str(exc), sums))
