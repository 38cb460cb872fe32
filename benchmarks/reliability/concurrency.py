"""Concurrency under load: many readers while a writer commits into the same store; racing writers.

Readers. Two reader processes each run a torch DataLoader over the finished feature set
``base/layer_1`` (8192 rows x 256 float16, with labels): one with ``--readers/2`` workers started by
fork, one with as many started by spawn (the workers are the reader processes that gather rows from
the mapped file). Each keeps a private copy of the set as it was when it opened the store (its
snapshot) and compares every batch, features and labels, against it. Every 10 batches it also opens
the store again (reading the manifest the writer keeps replacing) and checks every committed row of
the two newest sets the writer is filling against the bytes the writer writes there.

Writer. Meanwhile one process creates feature sets ``writer/set_<i>`` (2048 x 256 float16) one after
the other, writing 128 rows at a time and committing after each, then finishing the set.

Any exception, any batch that differs from the snapshot, any manifest that does not parse or
validate, any committed row that differs, counts as an error.

Racing writers. ``--race-rounds`` times, two forked processes start at the same instant to create
the same feature set with different data. Exactly one must finish it; the other must stop with a
WriterConflictError; the set must then hold the winner's rows, verified, and the store's other sets
must still verify.

    nice -n 10 .venv/bin/python benchmarks/reliability/concurrency.py --seconds 120 --readers 8 --race-rounds 50 \\
        --json benchmarks/results/reliability_concurrency.json
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import add_output_options, child_env, progress_logger, write_results

from featstore import FeatureStore
from featstore.errors import WriterConflictError

BASE_KEY, BASE_ROWS, DIM = "base/layer_1", 8192, 256
WRITER_ROWS, WRITER_CHUNK = 2048, 128
BATCH = 64


def chunk_rows(seed: int, start: int, stop: int) -> np.ndarray:
    """The rows a writer puts at ``start:stop`` of a set (a function of the set and the chunk only)."""
    return np.random.default_rng([seed, start]).standard_normal((stop - start, DIM)).astype(np.float16)


def build_base(root: Path) -> None:
    store = FeatureStore.create(root)
    labels = np.arange(BASE_ROWS) % 7
    with store.create_feature_set(BASE_KEY, BASE_ROWS, (DIM,), "float16", {"role": "base"}, labels) as w:
        for a in range(0, BASE_ROWS, 1024):
            w.write(a, chunk_rows(0, a, a + 1024))


# ---- the writer --------------------------------------------------------------------------------
def writer(root: Path, stop: Path, report: Path) -> None:
    """Fill sets one after the other, committing every chunk, until the file ``stop`` appears."""
    store = FeatureStore.open(root)
    commits = sets = 0
    while not stop.exists():
        key = f"writer/set_{sets}"
        w = store.create_feature_set(key, WRITER_ROWS, (DIM,), "float16", {"role": "writer"})
        for a in range(0, WRITER_ROWS, WRITER_CHUNK):
            w.write(a, chunk_rows(1 + sets, a, a + WRITER_CHUNK))
            w.commit()
            commits += 1
            if stop.exists():
                break
        if not w.missing_ranges():
            w.finish()
            sets += 1
        w.close()
    report.write_text(json.dumps({"commits": commits, "sets_finished": sets}))


# ---- the readers -------------------------------------------------------------------------------
class EpochBatches:
    """A batch sampler drawing a new permutation each epoch; ``current`` is the epoch being served."""

    def __init__(self, n: int, seed: int):
        self.n, self.rng, self.current = n, np.random.default_rng(seed), []

    def __iter__(self):
        perm = self.rng.permutation(self.n)
        self.current = [perm[i : i + BATCH] for i in range(0, self.n, BATCH)]
        return iter([b.tolist() for b in self.current])

    def __len__(self) -> int:
        return -(-self.n // BATCH)


def check_writer_sets(root: Path) -> int:
    """Open the store afresh; every committed row of the two newest writer sets is the writer's. Rows checked."""
    store = FeatureStore.open(root)
    keys = sorted(store.keys("writer/*"), key=lambda k: int(k.rsplit("_", 1)[1]))[-2:]
    rows = 0
    for key in keys:
        fs = store.get(key, allow_incomplete=True)
        seed = 1 + int(key.rsplit("_", 1)[1])
        for a, b in fs.committed_ranges:
            for c in range(a, b, WRITER_CHUNK):
                if not np.array_equal(fs[c : c + WRITER_CHUNK].numpy(), chunk_rows(seed, c, c + WRITER_CHUNK)):
                    raise AssertionError(f"{key}: committed rows {c}..{c + WRITER_CHUNK} are not what the writer wrote")
                rows += WRITER_CHUNK
    return rows


def reader(root: Path, context: str, workers: int, seconds: float, report: Path) -> None:
    """Serve shuffled epochs through a DataLoader for ``seconds`` after the first batch arrives."""
    torch.set_num_threads(1)
    store = FeatureStore.open(root)
    fs = store[BASE_KEY]
    snapshot, snapshot_labels = fs.to_numpy().copy(), fs.labels.numpy().copy()
    sampler = EpochBatches(len(fs), seed={"fork": 1, "spawn": 2}.get(context, 3))
    loader = torch.utils.data.DataLoader(
        store.dataset(BASE_KEY),
        batch_sampler=sampler,
        num_workers=workers,
        multiprocessing_context=context,
        persistent_workers=True,
    )
    counts = {
        "context": context,
        "workers": workers,
        "batches": 0,
        "rows": 0,
        "manifest_reads": 0,
        "writer_rows_checked": 0,
        "errors": [],
    }
    started = until = None
    try:
        while until is None or time.time() < until:
            for i, (features, labels) in enumerate(loader):
                if started is None:  # spawned workers take seconds to start: the clock starts now
                    started, until = time.time(), time.time() + seconds
                idx = sampler.current[i]
                if not (
                    np.array_equal(features.numpy(), snapshot[idx])
                    and np.array_equal(labels.numpy(), snapshot_labels[idx])
                ):
                    counts["errors"].append(f"batch {counts['batches']}: differs from the snapshot")
                counts["batches"] += 1
                counts["rows"] += len(idx)
                if counts["batches"] % 10 == 0:
                    try:
                        counts["writer_rows_checked"] += check_writer_sets(root)
                        counts["manifest_reads"] += 1
                    except Exception as exc:
                        counts["errors"].append(f"reopening the store: {type(exc).__name__}: {exc}")
                if time.time() >= until:
                    break
    except Exception as exc:
        counts["errors"].append(f"{type(exc).__name__}: {exc}")
    counts["reading_seconds"] = round(time.time() - (started or time.time()), 1)
    report.write_text(json.dumps(counts))


# ---- racing writers ------------------------------------------------------------------------------
def race(root: Path, rounds: int) -> dict:
    """Two forked writers create the same set at the same instant; exactly one may win."""
    outcomes = {"rounds": rounds, "one_winner": 0, "conflict_messages": {}, "failures": []}
    for r in range(rounds):
        key, start = f"race/set_{r}", time.time() + 0.05
        pids = {}
        for wid in (1, 2):
            msg = root.parent / f"race-{r}-{wid}.txt"
            pid = os.fork()
            if pid == 0:
                code = 3
                try:
                    time.sleep(max(0.0, start - time.time()))
                    w = FeatureStore.open(root).create_feature_set(key, 512, (DIM,), "float16", {"writer": wid})
                    for a in range(0, 512, 128):
                        w.write(a, chunk_rows(1000 * wid + r, a, a + 128))
                        w.commit()
                    w.finish()
                    code = 0
                except WriterConflictError as exc:
                    msg.write_text(str(exc))
                    code = 1
                except BaseException as exc:
                    msg.write_text(f"{type(exc).__name__}: {exc}")
                finally:
                    os._exit(code)
            pids[wid] = pid
        codes = {wid: os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]) for wid, pid in pids.items()}
        winners = [wid for wid, c in codes.items() if c == 0]
        losers = [wid for wid, c in codes.items() if c == 1]
        problem = None
        if len(winners) != 1 or len(losers) != 1:
            texts = {
                w: (root.parent / f"race-{r}-{w}.txt").read_text()
                for w in codes
                if (root.parent / f"race-{r}-{w}.txt").exists()
            }
            problem = f"round {r}: exit codes {codes}, messages {texts}"
        else:
            text = (root.parent / f"race-{r}-{losers[0]}.txt").read_text()
            kind = (
                "being written by another process"
                if "being written by another process" in text
                else ("already complete" if "already complete" in text else text[:120])
            )
            outcomes["conflict_messages"][kind] = outcomes["conflict_messages"].get(kind, 0) + 1
            store = FeatureStore.open(root)
            fs = store[key]
            want = np.concatenate([chunk_rows(1000 * winners[0] + r, a, a + 128) for a in range(0, 512, 128)])
            if fs.metadata != {"writer": winners[0]} or not np.array_equal(fs.to_numpy(), want):
                problem = f"round {r}: the set does not hold the winner's rows"
            else:
                store.verify()
        if problem:
            outcomes["failures"].append(problem)
        else:
            outcomes["one_winner"] += 1
    return outcomes


# ---- the run -------------------------------------------------------------------------------------
def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seconds", type=float, default=120, help="how long the readers read (after their workers start)")
    p.add_argument("--readers", type=int, default=8, help="DataLoader workers in all, half fork, half spawn")
    p.add_argument("--race-rounds", type=int, default=50)
    add_output_options(p)
    p.add_argument("--role", choices=["reader", "writer"], help=argparse.SUPPRESS)
    p.add_argument("--root", help=argparse.SUPPRESS)
    p.add_argument("--stop", help=argparse.SUPPRESS)
    p.add_argument("--context", help=argparse.SUPPRESS)
    p.add_argument("--report", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.role == "writer":
        writer(Path(args.root), Path(args.stop), Path(args.report))
        return {}
    if args.role == "reader":
        reader(Path(args.root), args.context, args.readers // 2, args.seconds, Path(args.report))
        return {}

    log = progress_logger(args.quiet)
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="featstore-concurrency-", dir=args.workdir) as tmp:
        root = Path(tmp) / "store"
        build_base(root)
        stop = Path(tmp) / "stop"
        script = str(Path(__file__).resolve())
        common = [
            "--root",
            str(root),
            "--stop",
            str(stop),
            "--readers",
            str(args.readers),
            "--seconds",
            str(args.seconds),
        ]
        procs = {
            name: subprocess.Popen(
                [sys.executable, script, "--role", role, *common, *extra, "--report", str(Path(tmp) / f"{name}.json")],
                env=child_env(),
            )
            for name, role, extra in [
                ("writer", "writer", []),
                ("fork", "reader", ["--context", "fork"]),
                ("spawn", "reader", ["--context", "spawn"]),
            ]
        }
        log(f"readers and writer started; each reader reads for {args.seconds:.0f} s from its first batch")
        codes = {name: procs[name].wait(timeout=args.seconds + 600) for name in ("fork", "spawn")}
        stop.touch()
        codes["writer"] = procs["writer"].wait(timeout=600)
        reports = {}
        for name in procs:
            path = Path(tmp) / f"{name}.json"
            reports[name] = (
                json.loads(path.read_text()) if path.exists() else {"errors": [f"no report (exit {codes[name]})"]}
            )
        log(
            f"readers done: {reports['fork'].get('batches')} + {reports['spawn'].get('batches')} batches; racing writers"
        )
        final = FeatureStore.open(root)
        final.verify()
        races = race(root, args.race_rounds)
        FeatureStore.open(root).verify()
    readers = [reports["fork"], reports["spawn"]]
    errors = sum(len(r.get("errors", [])) for r in readers) + sum(c != 0 for c in codes.values())
    figures = {
        "reader_processes": args.readers,
        "reading_seconds": min(r.get("reading_seconds", 0) for r in readers),
        "batches_read": sum(r.get("batches", 0) for r in readers),
        "rows_read": sum(r.get("rows", 0) for r in readers),
        "manifest_reads_during_writes": sum(r.get("manifest_reads", 0) for r in readers),
        "writer_rows_checked_by_readers": sum(r.get("writer_rows_checked", 0) for r in readers),
        "commits": reports["writer"].get("commits", 0),
        "writer_sets_finished": reports["writer"].get("sets_finished", 0),
        "errors": errors,
        "readers": readers,
        "exit_codes": codes,
        "race_rounds": races["rounds"],
        "race_rounds_with_one_winner": races["one_winner"],
        "race_loser_errors": races["conflict_messages"],
        "race_failures": races["failures"][:20],
        "seconds": round(time.perf_counter() - t0, 1),
    }
    command = "benchmarks/reliability/concurrency.py " + " ".join(argv if argv is not None else sys.argv[1:])
    write_results(args.json, "concurrency", command.strip(), figures)
    return figures


if __name__ == "__main__":
    f = main()
    sys.exit(1 if f and (f["errors"] or f["race_failures"]) else 0)
