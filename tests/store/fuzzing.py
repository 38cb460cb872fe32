"""Building and running featstore's fuzz targets; used by benchmarks/reliability/fuzz.py (long runs) and tests/store/test_fuzz.py (CI).

Targets:
- parse: tests/store/fuzz_parse.py, atheris (coverage-guided) over featstore.format's
  safetensors-header and manifest parsers.
- gather: csrc/fuzz/fuzz_gather.cpp over the compiled core's gather_rows, built with
  AddressSanitizer + UndefinedBehaviorSanitizer: with clang++ as a libFuzzer binary (coverage-guided),
  else with g++ and csrc/fuzz/standalone_main.cpp (random inputs, same sanitizers).
- tsan: csrc/fuzz/tsan_pool_stress.cpp, the gather thread pool under ThreadSanitizer (g++ or clang++).

Each run returns {"executions", "findings", "seconds", ...}; a finding is a non-zero exit (a sanitizer
report, an abort from a failed check, an unexpected exception) and its output is kept in "log".
"""

from __future__ import annotations

import json
import os
import re
import shutil
import struct
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
CSRC = REPO / "csrc"
SANITIZE_FLAGS = ["-fsanitize=address,undefined", "-fno-sanitize-recover=all", "-fno-omit-frame-pointer"]
CXXFLAGS = ["-std=c++17", "-O1", "-g", "-pthread"]


def find_clang() -> str | None:
    """A clang++ with libFuzzer (Debian: clang-14 + libclang-rt-14-dev), or None."""
    for name in ("clang++", "clang++-19", "clang++-18", "clang++-17", "clang++-16", "clang++-15", "clang++-14"):
        path = shutil.which(name)
        if path:
            return path
    return None


def _clean_env(**extra: str) -> dict:
    """The environment for a compiler or fuzzer subprocess: without an LD_PRELOAD of a sanitizer
    runtime (set when the suite itself runs sanitised), which would clash with the target's own."""
    env = {k: v for k, v in os.environ.items() if k not in ("LD_PRELOAD", "ASAN_OPTIONS", "UBSAN_OPTIONS")}
    return {**env, **extra}


def _compile(cmd: list[str]) -> None:
    done = subprocess.run(cmd, capture_output=True, text=True, env=_clean_env())
    if done.returncode:
        raise RuntimeError(f"build failed: {' '.join(cmd)}\n{done.stderr[-4000:]}")


def build_gather_fuzzer(out_dir: Path, engine: str = "auto") -> tuple[Path, str]:
    """Compile the gather fuzz target; ``engine`` 'libfuzzer' (clang), 'standalone' (g++) or 'auto'.
    Returns the binary and the engine used."""
    out_dir.mkdir(parents=True, exist_ok=True)
    clang = find_clang()
    if engine == "auto":
        engine = "libfuzzer" if clang else "standalone"
    sources = [str(CSRC / "fuzz" / "fuzz_gather.cpp"), str(CSRC / "gather.cpp")]
    binary = out_dir / f"fuzz_gather_{engine}"
    if engine == "libfuzzer":
        if not clang:
            raise RuntimeError("libFuzzer needs clang++ (apt-get install clang-14 libclang-rt-14-dev)")
        flags = [*SANITIZE_FLAGS]
        flags[0] = "-fsanitize=fuzzer,address,undefined"
        _compile([clang, *CXXFLAGS, *flags, *sources, "-o", str(binary)])
    else:
        cxx = os.environ.get("CXX") or shutil.which("g++") or shutil.which("c++")
        _compile([cxx, *CXXFLAGS, *SANITIZE_FLAGS, *sources, str(CSRC / "fuzz" / "standalone_main.cpp"), "-o", str(binary)])
    return binary, engine


def build_tsan_stress(out_dir: Path) -> Path:
    """Compile the thread-pool stress test with ThreadSanitizer."""
    out_dir.mkdir(parents=True, exist_ok=True)
    cxx = os.environ.get("CXX") or shutil.which("g++") or find_clang()
    binary = out_dir / "tsan_pool_stress"
    _compile([cxx, *CXXFLAGS, "-fsanitize=thread", str(CSRC / "fuzz" / "tsan_pool_stress.cpp"), str(CSRC / "gather.cpp"),
              "-o", str(binary)])
    return binary


_DONE = re.compile(r"Done (\d+) runs in (\d+) second")
_UNITS = re.compile(r"stat::number_of_executed_units: *(\d+)")
_COVERAGE = re.compile(r"cov: (\d+) ft: (\d+) corp: (\d+)")


def _run_fuzzer(cmd: list[str], env: dict | None = None, timeout: float | None = None) -> dict:
    t0 = time.perf_counter()
    done = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=timeout)
    seconds = time.perf_counter() - t0
    out = done.stdout + done.stderr
    match = _DONE.search(out)
    units = _UNITS.search(out)  # libFuzzer prints this even when it stops at a finding
    coverage = _COVERAGE.findall(out)
    return {
        "coverage": dict(zip(("edges", "features", "corpus"), map(int, coverage[-1]))) if coverage else None,
        "executions": int(match.group(1)) if match else int(units.group(1)) if units else 0,
        "findings": 0 if done.returncode == 0 and match else 1,
        "seconds": round(seconds, 1),
        "returncode": done.returncode,
        "command": " ".join(cmd),
        "log": out[-6000:] if done.returncode or not match else "",
    }


def run_gather_fuzz(binary: Path, runs: int, work: Path, seed: int = 1, timeout: float | None = None) -> dict:
    """Run the gather target ``runs`` times (libFuzzer keeps a corpus in ``work``/corpus)."""
    corpus = work / "gather_corpus"
    corpus.mkdir(parents=True, exist_ok=True)
    cmd = [str(binary), f"-runs={runs}", f"-seed={seed}"]
    if binary.name.endswith("libfuzzer"):
        cmd += [f"-artifact_prefix={work}/", "-print_final_stats=1", str(corpus)]
    env = _clean_env(ASAN_OPTIONS="detect_leaks=1", UBSAN_OPTIONS="print_stacktrace=1:halt_on_error=1")
    return _run_fuzzer(cmd, env=env, timeout=timeout)


def parse_seeds() -> list[bytes]:
    """Seeds for the parse target (first byte = mode, see fuzz_parse.py): a valid safetensors file
    and manifest for the raw modes, a few byte strings for the structured ones."""
    sys.path.insert(0, str(REPO))
    from featstore.store import format as fmt

    layout = fmt.Layout(10, (4,), "float16", True)
    tensors = {
        name: {"dtype": fmt.DTYPES[t.dtype][0], "shape": list(t.shape), "data_offsets": [t.begin, t.end]}
        for name, t in layout.tensors().items()
    }
    header = json.dumps({"__metadata__": {"format": "pt"}, **tensors}, separators=(",", ":")).encode()
    safetensors = struct.pack("<Q", len(header)) + header + b"\0" * (layout.features_bytes + layout.labels_bytes)
    record = fmt.FeatureSetRecord(
        key="enc/layer_1", file="enc/layer_1.safetensors", dtype="float16", shape=(10, 4), has_labels=True,
        committed=[(0, 10)], complete=True, block_rows=4, block_crc32=[1, 2, 3], labels_crc32=4, header_crc32=5,
    )
    manifest = {**fmt.empty_manifest(), "feature_sets": {"enc/layer_1": record.to_json()}}
    raw = [b"\x00" + safetensors, b"\x01" + json.dumps(manifest, separators=(",", ":")).encode(), b"\x01{}", b"\x00"]
    structured = [bytes([mode]) + bytes(range(i, i + 24)) for mode in (2, 3) for i in (0, 100, 200)]
    return raw + structured


# JSON strings and values of the formats, as a libFuzzer dictionary: mutations then splice in whole
# field names rather than guessing them byte by byte.
PARSE_TOKENS = [
    "__metadata__", "dtype", "shape", "data_offsets", "F16", "F32", "BF16", "I64", "U8", "BOOL", "features", "labels",
    "format", "featstore", "format_version", "feature_sets", "file", "committed", "complete", "checksum",
    "block_rows", "blocks", "header", "metadata", "created_at", "finished_at", "float16", "int64", "../x", "/abs",
]


def run_parse_fuzz(runs: int, work: Path, seed: int = 1, timeout: float | None = None) -> dict:
    """Run the atheris parse target ``runs`` times from the seed corpus (kept in ``work``/parse_corpus)."""
    corpus = work / "parse_corpus"
    corpus.mkdir(parents=True, exist_ok=True)
    for i, data in enumerate(parse_seeds()):
        (corpus / f"seed{i}").write_bytes(data)
    dictionary = work / "parse.dict"
    dictionary.write_text("".join(f"{json.dumps(json.dumps(t))}\n" for t in PARSE_TOKENS))
    cmd = [sys.executable, str(Path(__file__).with_name("fuzz_parse.py")), f"-runs={runs}", f"-seed={seed}",
           "-max_len=4096", "-timeout=10", f"-dict={dictionary}", f"-artifact_prefix={work}/", "-print_final_stats=1",
           str(corpus)]
    # The parsers are pure Python: the numpy backend keeps a sanitised _core (which would need its
    # runtime preloaded) out of the atheris process.
    env = _clean_env(PYTHONPATH=os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]), FEATSTORE_PUREPYTHON="1")
    return _run_fuzzer(cmd, env=env, timeout=timeout)


def run_tsan_stress(binary: Path, iterations: int, timeout: float | None = None) -> dict:
    """Run the thread-pool stress under TSan; a data race or deadlock report makes it exit non-zero."""
    t0 = time.perf_counter()
    env = _clean_env(TSAN_OPTIONS="halt_on_error=1:second_deadlock_stack=1")
    done = subprocess.run([str(binary), str(iterations)], capture_output=True, text=True, env=env, timeout=timeout)
    out = done.stdout + done.stderr
    return {
        "iterations": iterations,
        "reports": out.count("WARNING: ThreadSanitizer"),
        "returncode": done.returncode,
        "seconds": round(time.perf_counter() - t0, 1),
        "summary": out.strip().splitlines()[-1] if out.strip() else "",
        "log": out[-6000:] if done.returncode else "",
    }
