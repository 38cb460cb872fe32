"""A writer SIGKILLed at any moment leaves a store that opens, verifies, resumes, and ends bit-identical."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from featstore import FeatureStore
from featstore._crashpoints import STEPS

HERE = Path(__file__).parent
N_ROWS, CHUNK = 600, 50
KEY = "enc/layer_7"


def run_writer(root, crash_at=None, slow=None, timeout=120):
    env = dict(os.environ)
    env.pop("FEATSTORE_CRASH_AT", None)
    if crash_at:
        env["FEATSTORE_CRASH_AT"] = crash_at
    args = [sys.executable, str(HERE / "crash_writer.py"), str(root), str(N_ROWS), str(CHUNK)]
    if slow:
        args += ["--slow", str(slow)]
    return subprocess.Popen(args, env=env, stderr=subprocess.PIPE)


def finish(proc, timeout=120):
    _, err = proc.communicate(timeout=timeout)
    return proc.returncode, err.decode()


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    root = tmp_path_factory.mktemp("reference")
    code, err = finish(run_writer(root))
    assert code == 0, err
    return (root / "enc" / "layer_7.safetensors").read_bytes()


def check_after_kill(root: Path) -> int:
    """The killed store opens, verifies and holds exactly the expected committed rows."""
    if not (root / "featstore.json").exists():
        return 0
    store = FeatureStore.open(root)
    if KEY not in store:
        return 0
    store.verify()
    sys.path.insert(0, str(HERE))
    from crash_writer import chunk_rows

    part = store.get(KEY, allow_incomplete=True)
    for a, b in part.committed_ranges:
        for start in range(a - a % CHUNK, b, CHUNK):
            lo, hi = max(a, start), min(b, start + CHUNK)
            want = chunk_rows(start, min(N_ROWS, start + CHUNK))[lo - start : hi - start]
            assert np.array_equal(part[lo:hi].numpy(), want)
    return part.rows_committed


@pytest.mark.parametrize(
    "crash_at",
    ["file-created", "data-written:3", "data-synced:5", "manifest-temp-written:1", "manifest-temp-synced:4",
     "manifest-renamed:6", "manifest-dir-synced:9", "data-synced:12"],
)
def test_kill_at_each_step_then_resume_is_bit_identical(tmp_path, reference, crash_at):
    code, err = finish(run_writer(tmp_path, crash_at))
    assert code == -signal.SIGKILL, err
    check_after_kill(tmp_path)
    code, err = finish(run_writer(tmp_path))
    assert code == 0, err
    assert (tmp_path / "enc" / "layer_7.safetensors").read_bytes() == reference
    assert FeatureStore.open(tmp_path).verify()["feature_sets"] == 1


def test_kills_at_random_moments(tmp_path, reference):
    rng = random.Random(5)
    committed = []
    for _ in range(4):
        proc = run_writer(tmp_path, slow=0.1)
        time.sleep(rng.uniform(0.5, 2.5))  # before, during or after the import, or in the writes
        proc.send_signal(signal.SIGKILL)
        finish(proc)
        committed.append(check_after_kill(tmp_path))
    code, err = finish(run_writer(tmp_path))
    assert code == 0, err
    assert committed == sorted(committed), "committed rows never go backwards"
    assert any(0 < c < N_ROWS for c in committed), f"some kill should land mid-write, got {committed}"
    assert (tmp_path / "enc" / "layer_7.safetensors").read_bytes() == reference
