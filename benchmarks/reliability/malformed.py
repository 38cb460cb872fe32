"""Times every case of the malformed-input corpus (tests/store/malformed_corpus.py) and checks its error.

    nice -n 10 .venv/bin/python benchmarks/reliability/malformed.py --repeats 20

Per case: one damaged copy of the store, the failing call run once under tracemalloc (peak of
Python allocations), then timed ``--repeats`` times (a failing call changes nothing); reports the
median and max per case, and whether the error is the expected class naming the file and the field. Writes benchmarks/results/malformed.json.
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import statistics
import sys
import tempfile
import time
import tracemalloc
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "tests" / "store"))

import torch  # noqa: E402
from malformed_corpus import CASES, make_valid_store  # noqa: E402

from featstore import FeatureStoreError  # noqa: E402


def _damaged_call(case, valid: Path, work: Path):
    """A fresh damaged copy of the valid store in ``work``, and the call that must fail on it."""
    if work.exists():
        shutil.rmtree(work)
    work.mkdir()
    shutil.copytree(valid, work / "store", symlinks=True)
    return case.make(work / "store", work / "canary")


def _fail(call, trace: bool = False):
    """Run ``call``; returns its featstore error, the seconds it took and the tracemalloc peak."""
    if trace:
        tracemalloc.start()
    t0 = time.perf_counter()
    try:
        call()
    except FeatureStoreError as exc:
        return exc, time.perf_counter() - t0, tracemalloc.get_traced_memory()[1] if trace else 0
    finally:
        if trace:
            tracemalloc.stop()
    raise AssertionError("no featstore error")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "malformed.json")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        valid = Path(tmp) / "valid"
        make_valid_store(valid)
        for case in CASES:
            work = Path(tmp) / "work"
            call = _damaged_call(case, valid, work)
            exc, _, peak = _fail(call, trace=True)
            times = [_fail(call)[1] for _ in range(args.repeats)]  # failing calls change nothing: repeat on one copy
            message = str(exc)
            rows.append(
                {
                    "case": case.name,
                    "error": type(exc).__name__,
                    "clear": isinstance(exc, case.error)
                    and bool(re.search(case.file, message))
                    and bool(re.search(case.field, message)),
                    "median_ms": round(statistics.median(times) * 1e3, 3),
                    "max_ms": round(max(times) * 1e3, 3),
                    "peak_kib": round(peak / 1024, 1),
                    "code_ran": (work / "canary").exists(),
                }
            )
    summary = {
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "command": "benchmarks/reliability/malformed.py " + " ".join(argv if argv is not None else sys.argv[1:]),
        "cases": len(rows),
        "clear_errors": sum(r["clear"] for r in rows),
        "code_ran": sum(r["code_ran"] for r in rows),
        "slowest_median_ms": max(r["median_ms"] for r in rows),
        "slowest_median_case": max(rows, key=lambda r: r["median_ms"])["case"],
        "cases_median_over_10ms": sum(r["median_ms"] >= 10 for r in rows),
        "largest_peak_kib": max(r["peak_kib"] for r in rows),
        "rows": rows,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(summary, indent=1) + "\n")
    print(
        f"{summary['cases']} bad inputs, {summary['clear_errors']} clear featstore errors, "
        f"{summary['code_ran']} code executions"
    )
    print(
        f"slowest median {summary['slowest_median_ms']} ms ({summary['slowest_median_case']}), "
        f"{summary['cases_median_over_10ms']} cases >= 10 ms; largest tracemalloc peak {summary['largest_peak_kib']} KiB"
    )
    for r in sorted(rows, key=lambda r: -r["median_ms"])[:5]:
        print(f"  {r['median_ms']:8.3f} ms median, {r['max_ms']:8.3f} ms max  {r['case']}")
    print(f"wrote {args.out}")
    return 0 if summary["clear_errors"] == len(rows) and not summary["code_ran"] else 1


if __name__ == "__main__":
    sys.exit(main())
