"""Extraction by the ranks of a torch.distributed job (``torchrun -m featstore extract ...``).

1. Rank 0 takes every feature set of the job (creates or resumes it, holding its lock) and folds in
   the rows that ranks of a killed run committed; the other ranks wait (a failure there stops them
   all with its message).
2. Every rank reads the manifest and computes the same list of batches still to do (the same fixed
   batches of distinct images as a single process), takes a contiguous, even share of it and writes
   its rows through shard writers (featstore.store.shards); each rank's commits go to its own progress
   file. After every ``commit_every`` batches the ranks add up their counts (an all-reduce), which
   drives rank 0's progress bar for the whole job.
3. After a barrier (every rank's rows are durable), rank 0 folds every progress file into the
   manifest, with the block checksums, and marks the sets complete.

Each batch is encoded exactly as a single process encodes it, so the finished files and manifest
(but for its timestamps) are bit-identical to a single-process extraction on the same device.
"""

from __future__ import annotations

import time

from ..distributed import Ranks, all_sum_or_fail, barrier, on_main, split_evenly
from ..errors import DistributedError
from ..store import FeatureWriter
from ..store.shards import RankShard, fold_progress
from .encode import encode_batches, progress_bar
from .plan import ExtractResult, Job, batches_to_do
from .writers import take_sets

__all__ = ["extract_ranks"]


def extract_ranks(job: Job, ranks: Ranks, result: ExtractResult) -> None:
    """Run this rank's share of an extraction; see the module doc. ``result`` gets the job's totals."""
    owners: dict[str, FeatureWriter] = {}

    def take() -> None:
        owners.update(take_sets(job, create_new=True))

    try:
        on_main(ranks, take)
        _write_share(job.refreshed(), ranks, result)
        barrier(ranks)  # every rank's rows are durable and in its progress files

        def finish() -> None:
            for w in owners.values():
                fold_progress(w)
                w.finish()

        on_main(ranks, finish)
    finally:
        for w in owners.values():
            w.close()


def _write_share(job: Job, ranks: Ranks, result: ExtractResult) -> None:
    """Encode and write this rank's contiguous share of the batches still to do, committing to its
    progress file every ``commit_every`` batches; rank 0's bar shows the whole job's progress."""
    plan, commit_every = job.plan, job.commit_every
    todo = batches_to_do(job)
    mine = [todo[i] for i in split_evenly(len(todo), ranks.rank, ranks.world_size)]
    rounds = -(-len(split_evenly(len(todo), 0, ranks.world_size)) // commit_every)  # rank 0 has the largest share
    shard = RankShard(job.store, ranks.rank)
    bar = progress_bar(sum(len(b) for b in todo), job.progress and ranks.is_main)
    state = {"images": 0, "unreported": 0, "rounds": 0}

    def report() -> None:  # one all-reduce per round on every rank: the same number on all of them
        bar.update(all_sum_or_fail(ranks, state["unreported"]))
        state["unreported"] = 0
        state["rounds"] += 1

    def after_batch(done: int, images: int) -> None:
        state["images"] += images
        state["unreported"] += images
        if done % commit_every == 0:
            shard.commit()
            report()

    try:
        if mine:
            plan.encoder.load()  # before the clock starts
        writers = {key: shard.join(key, plan.metadata[lp], owner=ranks.is_main) for lp, key in job.active.items()}
        start = time.perf_counter()
        encode_batches(job, mine, lambda lp, key, shape: writers[key], after_batch)
        shard.commit()
        while state["rounds"] < rounds:
            report()
        result.images_encoded = all_sum_or_fail(ranks, state["images"])
        result.seconds = time.perf_counter() - start
    except BaseException as exc:
        # keep what this rank wrote: a rerun continues from it (a failure here must not hide the error)
        try:
            shard.commit()
        except Exception:
            pass
        if not isinstance(exc, DistributedError):  # this rank failed: tell the others at their next collective
            try:
                all_sum_or_fail(ranks, 0, exc)
            except Exception:
                pass
        raise
    finally:
        shard.close()
        bar.close()
