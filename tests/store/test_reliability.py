"""CI-sized runs of the reliability scripts in benchmarks/reliability/ (the long runs are in benchmarks/RELIABILITY.md)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPTS = Path(__file__).resolve().parents[2] / "benchmarks" / "reliability"


def run_script(name: str, tmp_path: Path, *args: str, timeout: int = 300) -> dict:
    out = tmp_path / f"{name}.json"
    proc = subprocess.run(
        [sys.executable, str(SCRIPTS / f"{name}.py"), *args, "--json", str(out), "--quiet"],
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return json.loads(out.read_text())


def test_crash_stress_20_kills(tmp_path):
    # 20 SIGKILLs of a forked writer at random crash points and random times; every store sound
    figures = run_script(
        "crash_stress",
        tmp_path,
        "--writer-kills",
        "20",
        "--extract-kills",
        "0",
        "--seed",
        "1",
        "--workdir",
        str(tmp_path),
    )
    assert figures["kills"] == 20 and figures["stores_broken"] == 0, figures["writer"]["failures"]
    by_step = figures["writer"]["kills_by_step"]
    assert "time" in by_step and len(by_step) >= 5, by_step


def test_bitrot_100_flips_all_detected(tmp_path):
    figures = run_script("bitrot", tmp_path, "--trials", "100", "--seed", "1", "--workdir", str(tmp_path))
    assert figures["bits_flipped"] == 100 and figures["detected"] == 100, figures["missed_trials"]
    assert set(figures["flips_by_region"]) == {"header", "features", "labels", "export"}


@pytest.mark.damages_store
def test_flip_in_header_metadata_fails_at_open_and_verify_names_the_set(tmp_path):
    # A flip inside a metadata string leaves valid JSON that agrees with the manifest on every tensor:
    # only the header checksum in the manifest catches it, at open and in `featstore verify`.
    from _util import make_store

    from featstore import FeatureStore
    from featstore.cli import main as featstore_cli
    from featstore.errors import CorruptFileError

    store, _, _ = make_store(tmp_path, key="enc/layer_1")
    path = store["enc/layer_1"].path
    raw = bytearray(path.read_bytes())
    at = raw.index(b'seed\\":0') + len(b'seed\\":')
    raw[at] ^= 1  # '0' -> '1'
    path.chmod(0o644)
    path.write_bytes(bytes(raw))
    try:
        FeatureStore.open(tmp_path)
        raise AssertionError("a damaged header opened")
    except CorruptFileError as exc:
        assert str(path) in str(exc) and "enc/layer_1" in str(exc) and "checksum" in str(exc)
    assert featstore_cli(["verify", str(tmp_path)]) == 1


def test_readers_and_writer_concurrently_then_racing_writers(tmp_path):
    figures = run_script(
        "concurrency", tmp_path, "--seconds", "5", "--readers", "4", "--race-rounds", "5", "--workdir", str(tmp_path)
    )
    assert figures["errors"] == 0, figures["readers"]
    assert figures["batches_read"] > 0 and figures["commits"] > 0 and figures["manifest_reads_during_writes"] > 0
    assert figures["race_rounds_with_one_winner"] == 5, figures["race_failures"]
