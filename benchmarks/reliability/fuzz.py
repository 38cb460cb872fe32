"""The long fuzzing run: parse fuzzing (atheris), gather fuzzing (libFuzzer or standalone, ASan+UBSan),
the thread pool under TSan, and >= 10^4 property cases of gather vs numpy; writes JSON + a summary.

    nice -n 10 .venv/bin/python benchmarks/reliability/fuzz.py --runs 1000000 --properties 10000

The CI-sized version of the same runs is tests/store/test_fuzz.py.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "tests" / "store"))  # the fuzz targets

import fuzzing
import gather_properties


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=1_000_000, help="executions per fuzz target")
    parser.add_argument("--properties", type=int, default=10_000, help="hypothesis cases of gather vs numpy")
    parser.add_argument("--tsan-iterations", type=int, default=2000, help="gathers per caller thread under TSan")
    parser.add_argument("--engine", default="auto", choices=["auto", "libfuzzer", "standalone"])
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--out", type=Path, default=fuzzing.REPO / "benchmarks" / "results" / "fuzz.json")
    args = parser.parse_args(argv)

    results: dict = {
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "command": "benchmarks/reliability/fuzz.py " + " ".join(argv if argv is not None else sys.argv[1:]),
        "machine": f"{platform.machine()}, {platform.python_version()}",
    }
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        print(f"parse fuzzing (atheris), {args.runs} runs ...", flush=True)
        results["parse"] = fuzzing.run_parse_fuzz(args.runs, work, seed=args.seed)
        binary, engine = fuzzing.build_gather_fuzzer(work / "bin", args.engine)
        print(f"gather fuzzing ({engine}, ASan+UBSan), {args.runs} runs ...", flush=True)
        results["gather"] = {**fuzzing.run_gather_fuzz(binary, args.runs, work, seed=args.seed), "engine": engine}
        print(f"thread pool under TSan, {args.tsan_iterations} gathers x 3 callers ...", flush=True)
        results["tsan"] = fuzzing.run_tsan_stress(fuzzing.build_tsan_stress(work / "bin"), args.tsan_iterations)
    print(f"gather vs numpy properties, {args.properties} cases ...", flush=True)
    t0 = time.perf_counter()
    results["properties"] = {
        **gather_properties.run(args.properties),
        "failures": 0,
        "seconds": round(time.perf_counter() - t0, 1),
    }

    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=1) + "\n")
    for name in ("parse", "gather"):
        r = results[name]
        print(f"{name}: {r['executions']} executions, {r['findings']} findings, {r['seconds']} s")
        if r["findings"]:
            print(r["log"])
    t = results["tsan"]
    print(f"tsan: {t['summary']}; {t['reports']} reports, {t['seconds']} s")
    p = results["properties"]
    print(
        f"properties: {p['cases']} cases ({p['core']} core, {p['feature_set']} feature set), 0 failures, {p['seconds']} s"
    )
    print(f"wrote {args.out}")
    return int(bool(results["parse"]["findings"] or results["gather"]["findings"] or t["returncode"]))


if __name__ == "__main__":
    sys.exit(main())
