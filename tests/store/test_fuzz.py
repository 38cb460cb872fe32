"""CI-sized fuzzing: the targets of fuzzing.py here, which benchmarks/reliability/fuzz.py runs for long, a few seconds each.

- parse: atheris over the safetensors-header and manifest parsers;
- gather: the compiled core's gather_rows under ASan+UBSan (g++ standalone driver, or libFuzzer
  when FEATSTORE_FUZZ_ENGINE=libfuzzer and clang is installed);
- tsan: the gather thread pool under ThreadSanitizer;
- properties: gather vs numpy fancy indexing (hypothesis).
"""

from __future__ import annotations

import os

import fuzzing
import gather_properties
import pytest

RUNS = 20_000


def _show(result: dict) -> str:
    return f"{result.get('command', '')}\n{result['log']}"


def test_parse_fuzz_short_run(tmp_path):
    result = fuzzing.run_parse_fuzz(RUNS, tmp_path, timeout=300)
    assert result["findings"] == 0, _show(result)
    assert result["executions"] >= RUNS


def test_gather_fuzz_short_run_under_asan_ubsan(tmp_path):
    binary, _ = fuzzing.build_gather_fuzzer(tmp_path / "bin", os.environ.get("FEATSTORE_FUZZ_ENGINE", "standalone"))
    result = fuzzing.run_gather_fuzz(binary, RUNS, tmp_path, timeout=300)
    assert result["findings"] == 0, _show(result)
    assert result["executions"] >= RUNS


def test_thread_pool_under_tsan(tmp_path):
    result = fuzzing.run_tsan_stress(fuzzing.build_tsan_stress(tmp_path / "bin"), 150, timeout=300)
    assert result["returncode"] == 0 and result["reports"] == 0, result["log"]
    assert "450 gathers" in result["summary"] and "0 wrong rows" in result["summary"]


def test_gather_matches_numpy_fancy_indexing():
    counts = gather_properties.run(300)
    assert counts["cases"] == 300 and counts["core"] > 50 and counts["feature_set"] > 50


@pytest.mark.parametrize("seed", [b"\x01garbage", b"\x00[[[[", b"\x01" + b"\xff" * 8 + b"{}"])
def test_parse_target_rejects_garbage_with_featstore_errors(seed):
    from fuzz_parse import test_one_input

    test_one_input(seed)  # raises anything but a FeatureStoreError, or passes
