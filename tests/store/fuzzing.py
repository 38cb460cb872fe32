"""Building and running featstore's fuzz targets; used by benchmarks/reliability/fuzz.py (long runs) and tests/store/test_fuzz.py (CI).

Targets:
- parse: tests/store/fuzz_parse.py, atheris (coverage-guided) over featstore.format's
  safetensors-header and manifest parsers.
- gather: csrc/fuzz/fuzz_gather.cpp over the compiled core's gather_rows, built with
  AddressSanitizer + UndefinedBehaviorSanitizer: with clang++ as a libFuzzer binary (coverage-guided),
  else with g++ and csrc/fuzz/standalone_main.cpp (random inputs, same sanitizers).
- tsan: csrc/fuzz/tsan_pool_stress.cpp, the gather thread pool under ThreadSanitizer (g++ or clang++).

The C++ targets are built with CMake where it is found (`cmake -DFEATSTORE_FUZZ=ON -DFEATSTORE_PYTHON=OFF`:
targets fuzz_gather_standalone, fuzz_gather_libfuzzer (clang only) and tsan_pool_stress, each linked
with a sanitised build of the gather library), in build/fuzz/<compiler>; without CMake, or with
FEATSTORE_FUZZ_BUILD=direct, by calling the compiler on the same sources.

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
# The direct build (no CMake): the same flags as CMakeLists.txt's FEATSTORE_FUZZ targets.
SANITIZE_FLAGS = ["-fsanitize=address,undefined", "-fno-sanitize-recover=all", "-fno-omit-frame-pointer"]
CXXFLAGS = ["-std=c++17", "-O1", "-g", "-pthread", "-Wall", "-Wextra", f"-I{CSRC}"]


def find_clang() -> str | None:
    """A clang++ with libFuzzer (Debian: clang-14 + libclang-rt-14-dev), or None."""
    for name in ("clang++", "clang++-19", "clang++-18", "clang++-17", "clang++-16", "clang++-15", "clang++-14"):
        path = shutil.which(name)
        if path:
            return path
    return None


def find_tool(name: str) -> str | None:
    """cmake or ninja: next to the running Python (pip's cmake/ninja in a venv), from the Python
    package of that name, or on PATH; None if there is none."""
    beside = Path(sys.executable).with_name(name)
    if beside.is_file() and os.access(beside, os.X_OK):
        return str(beside)
    try:
        module = __import__(name)
        bin_dir = getattr(module, "CMAKE_BIN_DIR" if name == "cmake" else "BIN_DIR", None)
        if bin_dir and (Path(bin_dir) / name).is_file():
            return str(Path(bin_dir) / name)
    except ImportError:
        pass
    return shutil.which(name)


def gather_library_sources() -> list[Path]:
    """The gather library's sources, as CMakeLists.txt lists them (FEATSTORE_GATHER_SOURCES)."""
    match = re.search(r"set\(FEATSTORE_GATHER_SOURCES([^)]*)\)", (REPO / "CMakeLists.txt").read_text())
    if not match:
        raise RuntimeError("CMakeLists.txt does not set FEATSTORE_GATHER_SOURCES")
    return [REPO / name for name in match.group(1).split()]


def _clean_env(**extra: str) -> dict:
    """The environment for a compiler or fuzzer subprocess: without an LD_PRELOAD of a sanitizer
    runtime (set when the suite itself runs sanitised), which would clash with the target's own."""
    env = {k: v for k, v in os.environ.items() if k not in ("LD_PRELOAD", "ASAN_OPTIONS", "UBSAN_OPTIONS")}
    return {**env, **extra}


def _compile(cmd: list[str]) -> None:
    done = subprocess.run(cmd, capture_output=True, text=True, env=_clean_env())
    if done.returncode:
        raise RuntimeError(f"build failed: {' '.join(cmd)}\n{(done.stdout + done.stderr)[-4000:]}")


def _use_cmake() -> bool:
    """FEATSTORE_FUZZ_BUILD=cmake|direct|auto (default): build with CMake's FEATSTORE_FUZZ targets,
    or by calling the compiler directly (the fallback where CMake is missing)."""
    mode = os.environ.get("FEATSTORE_FUZZ_BUILD", "auto")
    if mode not in ("auto", "cmake", "direct"):
        raise ValueError(f"FEATSTORE_FUZZ_BUILD must be auto, cmake or direct, got {mode!r}")
    if mode == "cmake" and not find_tool("cmake"):
        raise RuntimeError("FEATSTORE_FUZZ_BUILD=cmake but no cmake was found")
    return mode == "cmake" or (mode == "auto" and find_tool("cmake") is not None)


def cmake_build_dir(cxx: str) -> Path:
    """The CMake build folder of the fuzz targets for compiler ``cxx``: build/fuzz/<compiler> in the
    repository (kept between runs, so a rebuild is incremental), or under $FEATSTORE_FUZZ_BUILD_DIR."""
    return Path(os.environ.get("FEATSTORE_FUZZ_BUILD_DIR") or REPO / "build" / "fuzz") / Path(cxx).name


def _cmake_target(cxx: str, target: str, out_dir: Path) -> Path:
    """Configure (FEATSTORE_FUZZ=ON, no Python modules) and build one CMake target with compiler
    ``cxx``; the binary is copied into ``out_dir``."""
    cmake = find_tool("cmake")
    build = cmake_build_dir(cxx)
    configure = [
        cmake,
        "-S",
        str(REPO),
        "-B",
        str(build),
        "-DFEATSTORE_FUZZ=ON",
        "-DFEATSTORE_PYTHON=OFF",
        "-DFEATSTORE_CUDA=OFF",
        f"-DCMAKE_CXX_COMPILER={cxx}",
    ]
    ninja = find_tool("ninja")
    if ninja and not (build / "CMakeCache.txt").exists():  # the generator is fixed at the first configure
        configure += ["-G", "Ninja", f"-DCMAKE_MAKE_PROGRAM={ninja}"]
    _compile(configure)
    _compile([cmake, "--build", str(build), "--target", target, "--parallel", str(os.cpu_count() or 2)])
    binary = out_dir / target
    shutil.copy2(build / target, binary)
    return binary


def build_gather_fuzzer(out_dir: Path, engine: str = "auto") -> tuple[Path, str]:
    """Build the gather fuzz target; ``engine`` 'libfuzzer' (clang), 'standalone' (g++) or 'auto'.
    With CMake: the target fuzz_gather_<engine> of FEATSTORE_FUZZ=ON, linked with the ASan+UBSan
    build of the gather library. Returns the binary (in ``out_dir``) and the engine used."""
    out_dir.mkdir(parents=True, exist_ok=True)
    clang = find_clang()
    if engine == "auto":
        engine = "libfuzzer" if clang else "standalone"
    if engine == "libfuzzer" and not clang:
        raise RuntimeError("libFuzzer needs clang++ (apt-get install clang-14 libclang-rt-14-dev)")
    cxx = clang if engine == "libfuzzer" else os.environ.get("CXX") or shutil.which("g++") or shutil.which("c++")
    if _use_cmake():
        return _cmake_target(cxx, f"fuzz_gather_{engine}", out_dir), engine
    sources = [str(CSRC / "fuzz" / "fuzz_gather.cpp"), *map(str, gather_library_sources())]
    binary = out_dir / f"fuzz_gather_{engine}"
    if engine == "libfuzzer":
        flags = [*SANITIZE_FLAGS]
        flags[0] = "-fsanitize=fuzzer,address,undefined"
        _compile([cxx, *CXXFLAGS, *flags, *sources, "-o", str(binary)])
    else:
        _compile(
            [cxx, *CXXFLAGS, *SANITIZE_FLAGS, *sources, str(CSRC / "fuzz" / "standalone_main.cpp"), "-o", str(binary)]
        )
    return binary, engine


def build_tsan_stress(out_dir: Path) -> Path:
    """Build the thread-pool stress test with ThreadSanitizer (with CMake: the target tsan_pool_stress,
    linked with the TSan build of the gather library)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    cxx = os.environ.get("CXX") or shutil.which("g++") or find_clang()
    if _use_cmake():
        return _cmake_target(cxx, "tsan_pool_stress", out_dir)
    binary = out_dir / "tsan_pool_stress"
    _compile(
        [
            cxx,
            *CXXFLAGS,
            "-fsanitize=thread",
            str(CSRC / "fuzz" / "tsan_pool_stress.cpp"),
            *map(str, gather_library_sources()),
            "-o",
            str(binary),
        ]
    )
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
        key="enc/layer_1",
        file="enc/layer_1.safetensors",
        dtype="float16",
        shape=(10, 4),
        has_labels=True,
        committed=[(0, 10)],
        complete=True,
        block_rows=4,
        block_crc32=[1, 2, 3],
        labels_crc32=4,
        header_crc32=5,
    )
    manifest = {**fmt.empty_manifest(), "feature_sets": {"enc/layer_1": record.to_json()}}
    raw = [b"\x00" + safetensors, b"\x01" + json.dumps(manifest, separators=(",", ":")).encode(), b"\x01{}", b"\x00"]
    structured = [bytes([mode]) + bytes(range(i, i + 24)) for mode in (2, 3) for i in (0, 100, 200)]
    return raw + structured


# JSON strings and values of the formats, as a libFuzzer dictionary: mutations then splice in whole
# field names rather than guessing them byte by byte.
PARSE_TOKENS = [
    "__metadata__",
    "dtype",
    "shape",
    "data_offsets",
    "F16",
    "F32",
    "BF16",
    "I64",
    "U8",
    "BOOL",
    "features",
    "labels",
    "format",
    "featstore",
    "format_version",
    "feature_sets",
    "file",
    "committed",
    "complete",
    "checksum",
    "block_rows",
    "blocks",
    "header",
    "metadata",
    "created_at",
    "finished_at",
    "float16",
    "int64",
    "../x",
    "/abs",
]


def run_parse_fuzz(runs: int, work: Path, seed: int = 1, timeout: float | None = None) -> dict:
    """Run the atheris parse target ``runs`` times from the seed corpus (kept in ``work``/parse_corpus)."""
    corpus = work / "parse_corpus"
    corpus.mkdir(parents=True, exist_ok=True)
    for i, data in enumerate(parse_seeds()):
        (corpus / f"seed{i}").write_bytes(data)
    dictionary = work / "parse.dict"
    dictionary.write_text("".join(f"{json.dumps(json.dumps(t))}\n" for t in PARSE_TOKENS))
    cmd = [
        sys.executable,
        str(Path(__file__).with_name("fuzz_parse.py")),
        f"-runs={runs}",
        f"-seed={seed}",
        "-max_len=4096",
        "-timeout=10",
        f"-dict={dictionary}",
        f"-artifact_prefix={work}/",
        "-print_final_stats=1",
        str(corpus),
    ]
    # The parsers are pure Python: the numpy backend keeps a sanitised _core (which would need its
    # runtime preloaded) out of the atheris process.
    env = _clean_env(
        PYTHONPATH=os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]), FEATSTORE_PUREPYTHON="1"
    )
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
