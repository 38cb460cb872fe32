"""Crash stress: SIGKILL featstore writers at random moments; every store they leave must be sound.

Two workloads, each a real process killed with SIGKILL:

- ``writer``: ``tests/store/crash_writer.py`` fills a 600-row float16 feature set (with labels) 50 rows at a
  time in a shuffled order, committing after each chunk, then finishes it;
- ``extract``: the real ``featstore extract`` command on a tiny random-init DINOv2 over a 24-image
  dataset (layers 2 and last, pooling cls and patch: 4 feature sets, a commit after every batch of 3).

Two ways to pick the moment:

- ``point``: ``FEATSTORE_CRASH_AT=<step>:<n>`` kills the writer the n-th time it reaches a named step
  of creating, committing or finishing (header written, file created, data written, data synced,
  blocks checksummed, manifest temp written / synced / renamed, folder synced, file made read-only);
  the step and n are drawn at random among the occurrences the run still has ahead of it;
- ``time``: SIGKILL from outside after a delay drawn uniformly over the run's duration.

A cycle starts from an empty store and kills its writer 1-4 times, each run resuming the last; after
every kill the store must open (strict), pass ``verify()``, and hold in every committed row and header
exactly the reference's bytes. Then a last run finishes it and its files must be bit-identical to an
uninterrupted run. A store is broken when any of this fails.

    nice -n 10 .venv/bin/python benchmarks/reliability/crash_stress.py --writer-kills 150 --extract-kills 50 \\
        --json benchmarks/results/reliability_crash.json
"""

from __future__ import annotations

import argparse
import os
import random
import shutil
import signal
import sys
import tempfile
import time
import traceback
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import (
    add_output_options,
    check_against_reference,
    child_env,
    progress_logger,
    safetensors_bytes,
    write_results,
)

from featstore import FeatureStore
from featstore.store import format as fmt
from featstore.store.crashpoints import STEPS

WRITER_ROWS, WRITER_CHUNK, WRITER_SLOW = 600, 50, 0.03
EXTRACT_IMAGES, EXTRACT_REPEATS, EXTRACT_BATCH, EXTRACT_SETS = 24, (2, 9), 3, 4
WRITE_STEPS = ("data-written", "data-synced", "blocks-checksummed")
MANIFEST_STEPS = tuple(s for s in STEPS if s.startswith("manifest-"))
CREATE_STEPS = ("header-written", "file-created")


class Child:
    """A running writer process: ``wait(timeout)`` gives its exit code (negative: killed by that
    signal) or None while it runs; ``kill()`` SIGKILLs it and its process group."""

    def __init__(self, pid: int):
        self.pid = pid
        self.code: int | None = None

    def wait(self, timeout: float) -> int | None:
        deadline = time.perf_counter() + timeout
        while self.code is None:
            pid, status = os.waitpid(self.pid, os.WNOHANG)
            if pid:
                self.code = os.waitstatus_to_exitcode(status)
            elif time.perf_counter() >= deadline:
                break
            else:
                time.sleep(0.002)
        return self.code

    def kill(self) -> None:
        if self.code is None:
            try:
                os.killpg(self.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            self.wait(60)


class Workload:
    """Starts a process that writes a store at ``out``; knows how often a run reaches each step."""

    name = ""

    def command(self, out: Path) -> list[str]:
        raise NotImplementedError

    def start(self, out: Path, crash_at: str = "") -> Child:
        """Run :meth:`command` in a new process group, with FEATSTORE_CRASH_AT=crash_at."""
        env = child_env(FEATSTORE_CRASH_AT=crash_at) if crash_at else child_env()
        cmd = self.command(out)
        quiet = [(os.POSIX_SPAWN_OPEN, 1, os.devnull, os.O_WRONLY, 0)]
        return Child(os.posix_spawn(cmd[0], cmd, env, file_actions=quiet, setsid=True))

    def step_counts(self, out: Path) -> dict[str, int]:
        raise NotImplementedError


class WriterWorkload(Workload):
    """tests/store/crash_writer.py's fill(), in a child forked from this process (featstore and torch are
    imported once here, so a kill costs milliseconds instead of an interpreter start)."""

    name = "writer"

    def start(self, out: Path, crash_at: str = "") -> Child:
        from crash_writer import fill

        from featstore.store import crashpoints as _crashpoints

        sys.stderr.flush()
        pid = os.fork()
        if pid == 0:  # the child: write, then leave without running the parent's cleanup
            code = 1
            try:
                os.setsid()
                _crashpoints.arm(crash_at)
                fill(str(out), WRITER_ROWS, WRITER_CHUNK, WRITER_SLOW)
                code = 0
            except BaseException:
                traceback.print_exc()
            finally:
                os._exit(code)
        return Child(pid)

    def step_counts(self, out: Path) -> dict[str, int]:
        return _step_counts(
            out,
            sets=1,
            units_left=_units_left(out, 1, lambda row: row // WRITER_CHUNK, -(-WRITER_ROWS // WRITER_CHUNK)),
        )


class ExtractWorkload(Workload):
    name = "extract"

    def __init__(self, work: Path):
        from _encoder_models import make_dataset, make_dinov2, offline_hub

        with offline_hub():
            self.model = make_dinov2(work / "model")
        self.dataset = make_dataset(work, n_images=EXTRACT_IMAGES, repeats=EXTRACT_REPEATS)

    def command(self, out: Path) -> list[str]:
        return [
            sys.executable,
            "-m",
            "featstore",
            "extract",
            "--dataset",
            str(self.dataset),
            "--encoder",
            "dinov2",
            "--model",
            str(self.model),
            "--layers",
            "2,last",
            "--pooling",
            "cls,patch",
            "--out",
            str(out),
            "--batch-size",
            str(EXTRACT_BATCH),
            "--commit-every",
            "1",
            "--num-workers",
            "0",
            "--no-progress",
            "--store-dtype",
            "float32",
        ]

    def step_counts(self, out: Path) -> dict[str, int]:
        batches = -(-EXTRACT_IMAGES // EXTRACT_BATCH)
        image_of_row = list(range(EXTRACT_IMAGES)) + list(EXTRACT_REPEATS)
        units = _units_left(out, EXTRACT_SETS, lambda row: image_of_row[row] // EXTRACT_BATCH, batches)
        return _step_counts(out, sets=EXTRACT_SETS, units_left=units)


def _units_left(out: Path, sets: int, unit_of_row, total: int) -> int:
    """Chunks (writer) or batches (extract) holding a row that some feature set has not committed."""
    try:
        records = fmt.read_manifest(out)[1]
    except Exception:
        return total
    if len(records) < sets:
        return total
    return len(
        {unit_of_row(row) for r in records.values() for a, b in fmt.gaps(r.committed, r.n_rows) for row in range(a, b)}
    )


def _step_counts(out: Path, sets: int, units_left: int) -> dict[str, int]:
    exists = (out / fmt.MANIFEST_NAME).exists()
    try:
        records = fmt.read_manifest(out)[1] if exists else {}
    except Exception:
        records = {}
    new_sets = sets - len(records)
    incomplete = sum(1 for r in records.values() if not r.complete) + new_sets
    counts = {s: new_sets for s in CREATE_STEPS}
    counts.update({s: units_left * sets for s in WRITE_STEPS})
    manifest_writes = (0 if exists else 1) + new_sets + units_left * sets + incomplete
    counts.update({s: manifest_writes for s in MANIFEST_STEPS})
    counts["file-read-only"] = incomplete
    return {s: n for s, n in counts.items() if n > 0}


def run(workload: Workload, out: Path, crash_at: str = "", kill_after: float | None = None) -> int:
    """One run of ``workload``; with ``kill_after`` SIGKILL it then. Returns its exit code."""
    child = workload.start(out, crash_at)
    if kill_after is not None and child.wait(kill_after) is None:
        child.kill()
    code = child.wait(600)
    if code is None:
        child.kill()
        raise SystemExit(f"{workload.name} at {out} did not end within 10 minutes")
    return code


def reference_run(workload: Workload, work: Path) -> tuple[Path, float, float]:
    """An uninterrupted run: its store, its duration, and when its manifest first appeared."""
    out = work / f"{workload.name}-reference"
    t0 = time.perf_counter()
    child = workload.start(out)
    first_manifest = None
    while child.wait(0.005) is None:
        if first_manifest is None and (out / fmt.MANIFEST_NAME).exists():
            first_manifest = time.perf_counter() - t0
    duration = time.perf_counter() - t0
    if child.code != 0:
        raise SystemExit(f"the uninterrupted {workload.name} run failed with exit code {child.code}")
    return out, duration, first_manifest or 0.0


def stress(workload: Workload, kills: int, rng: random.Random, work: Path, log) -> dict:
    """Kill ``workload`` ``kills`` times over fresh stores; returns the figures."""
    ref_root, duration, first_manifest = reference_run(workload, work)
    reference = FeatureStore.open(ref_root)
    ref_files = safetensors_bytes(ref_root)
    log(
        f"{workload.name}: reference run {duration:.1f} s (manifest after {first_manifest:.1f} s), {len(ref_files)} file(s)"
    )
    done = broken = cycles = finished_early = 0
    by_mode: Counter = Counter()
    by_step: Counter = Counter()
    left: Counter = Counter()  # what each kill left committed
    total_rows = sum(reference.info(k).n_rows for k in reference.keys())
    failures: list[str] = []
    while done < kills:
        cycles += 1
        out = work / f"{workload.name}-{cycles}"
        ok = True
        for _ in range(min(rng.randint(1, 4), kills - done)):
            if rng.random() < 0.5:
                counts = workload.step_counts(out)
                if not counts:
                    break
                step = rng.choice(sorted(counts))
                spec = f"{step}:{rng.randint(1, counts[step])}"
                code = run(workload, out, crash_at=spec)
                mode = "point"
            else:
                delay = rng.uniform(first_manifest * 0.8, duration * 1.05)
                code = run(workload, out, kill_after=delay)
                mode, step, spec = "time", "time", f"{delay:.2f}s"
            if code == 0:
                finished_early += 1  # the run ended before the kill: not counted as a kill
                break
            if code != -signal.SIGKILL:
                ok = False
                failures.append(f"{workload.name} cycle {cycles} ({spec}): exit code {code} (its stderr is above)")
                break
            done += 1
            by_mode[mode] += 1
            by_step[step] += 1
            try:
                rows = check_against_reference(out, reference)
            except Exception as exc:  # any problem at all is a broken store
                ok = False
                failures.append(f"{workload.name} cycle {cycles} after kill at {spec}: {type(exc).__name__}: {exc}")
                break
            left["no rows" if rows == 0 else "all rows" if rows == total_rows else "some rows"] += 1
            log(f"  cycle {cycles}: kill {done}/{kills} at {spec}: store ok, {rows} rows committed")
        if ok:
            code = run(workload, out)
            if code != 0:
                ok = False
                failures.append(f"{workload.name} cycle {cycles}: resume failed with exit code {code}")
            elif safetensors_bytes(out) != ref_files:
                ok = False
                failures.append(f"{workload.name} cycle {cycles}: finished files differ from the uninterrupted run")
            else:
                try:
                    FeatureStore.open(out).verify()
                except Exception as exc:
                    ok = False
                    failures.append(f"{workload.name} cycle {cycles}: finished store fails: {exc}")
        broken += not ok
        if not ok:
            log(f"  cycle {cycles}: BROKEN: {failures[-1]}")
        shutil.rmtree(out, ignore_errors=True)
    return {
        "kills": done,
        "stores_broken": broken,
        "cycles": cycles,
        "kills_by_mode": dict(by_mode),
        "kills_by_step": dict(sorted(by_step.items())),
        "committed_after_kill": dict(left),
        "runs_that_finished_before_the_kill": finished_early,
        "reference_seconds": round(duration, 2),
        "failures": failures,
    }


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--writer-kills", type=int, default=150)
    p.add_argument("--extract-kills", type=int, default=50)
    p.add_argument("--seed", type=int, default=0)
    add_output_options(p)
    args = p.parse_args(argv)
    rng = random.Random(args.seed)
    log = progress_logger(args.quiet)
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="featstore-crash-", dir=args.workdir) as tmp:
        work = Path(tmp)
        results = {}
        if args.writer_kills:
            results["writer"] = stress(WriterWorkload(), args.writer_kills, rng, work, log)
        if args.extract_kills:
            results["extract"] = stress(ExtractWorkload(work), args.extract_kills, rng, work, log)
    figures = {
        "kills": sum(r["kills"] for r in results.values()),
        "stores_broken": sum(r["stores_broken"] for r in results.values()),
        "seconds": round(time.perf_counter() - t0, 1),
        "seed": args.seed,
        **results,
    }
    command = "benchmarks/reliability/crash_stress.py " + " ".join(argv if argv is not None else sys.argv[1:])
    write_results(args.json, "crash_stress", command.strip(), figures)
    return figures


if __name__ == "__main__":
    sys.exit(1 if main()["stores_broken"] else 0)
