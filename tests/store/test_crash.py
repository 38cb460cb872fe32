"""A writer SIGKILLed at any moment leaves a store that opens, verifies, resumes, and ends bit-identical."""

from __future__ import annotations

import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pytest

from featstore import FeatureStore

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
    return subprocess.Popen(args, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)


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
    [
        "file-created",
        "data-written:3",
        "data-synced:5",
        "manifest-temp-written:1",
        "manifest-temp-synced:4",
        "manifest-renamed:6",
        "manifest-dir-synced:9",
        "data-synced:12",
    ],
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
        proc.stdout.readline()  # "writing": the imports are done (on a busy machine they take seconds)
        time.sleep(rng.uniform(0.0, 1.2))  # during the writes (1.2 s at most), or after them
        proc.send_signal(signal.SIGKILL)
        finish(proc)
        committed.append(check_after_kill(tmp_path))
    code, err = finish(run_writer(tmp_path))
    assert code == 0, err
    assert committed == sorted(committed), "committed rows never go backwards"
    assert any(0 < c < N_ROWS for c in committed), f"some kill should land mid-write, got {committed}"
    assert (tmp_path / "enc" / "layer_7.safetensors").read_bytes() == reference


def _fill_as_non_root(root: Path, crash_at: str) -> tuple[int, str]:
    """Run crash_writer.fill in a forked child that is not root (root ignores file modes); returns its
    exit code and the message of the exception that ended it, if any."""
    from crash_writer import fill

    from featstore.store import crashpoints as _crashpoints

    error = root.parent / "error.txt"
    error.unlink(missing_ok=True)
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            if os.geteuid() == 0:
                os.setgroups([])
                os.setgid(65534)
                os.setuid(65534)  # nobody
            _crashpoints.arm(crash_at)
            fill(str(root), 100, 50)
            code = 0
        except BaseException as exc:
            error.write_text(f"{type(exc).__name__}: {exc}")
        finally:
            os._exit(code)
    code = os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1])
    return code, error.read_text() if error.exists() else ""


@pytest.fixture
def shared_dir():
    """A folder every user can write in (pytest's own are private to root), with fill()'s lazy imports done."""
    sys.path.insert(0, str(HERE))
    from crash_writer import fill

    folder = Path(tempfile.mkdtemp(prefix="featstore-nonroot-"))
    fill(str(folder / "warm"), 100, 50)  # import all that fill() imports lazily, before giving up root
    folder.chmod(0o777)
    yield folder
    shutil.rmtree(folder)


def test_kill_after_file_made_read_only_resumes_as_non_root(shared_dir):
    # finish() makes the file read-only, then marks the set complete in the manifest. Killed in between,
    # a non-root writer must still be able to resume (it used to fail opening the 0444 file for writing).
    root = shared_dir / "store"
    assert _fill_as_non_root(root, "file-read-only")[0] == -signal.SIGKILL
    path = root / "enc" / "layer_7.safetensors"
    assert not FeatureStore.open(root).info(KEY).complete and path.stat().st_mode & 0o777 == 0o444
    assert _fill_as_non_root(root, "") == (0, "")
    store = FeatureStore.open(root)
    assert store.info(KEY).complete and store.verify()["feature_sets"] == 1
    assert path.read_bytes() == (shared_dir / "warm" / "enc" / "layer_7.safetensors").read_bytes()


def test_read_only_file_with_missing_rows_is_a_clear_conflict(shared_dir):
    root = shared_dir / "store"
    assert _fill_as_non_root(root, "data-synced:2")[0] == -signal.SIGKILL  # 50 of 100 rows committed
    (root / "enc" / "layer_7.safetensors").chmod(0o444)  # changed outside featstore
    code, message = _fill_as_non_root(root, "")
    assert code == 1 and message.startswith("WriterConflictError") and "is read-only" in message
    assert "only 50 of 100 rows are committed" in message
    store = FeatureStore.open(root)
    assert store.info(KEY).rows_committed == 50
    store.verify()
