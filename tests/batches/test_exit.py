"""A script that stops mid-epoch exits cleanly: the loader's background threads are stopped and joined
before the interpreter finalizes (featstore.batches.threads), so none is inside the compiled core when
Python ends it (that aborted the process: "terminate called without an active exception", status 134)."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import numpy as np
import torch

from featstore import FeatureStore
from featstore.batches import threads

torch.set_num_threads(1)

STOP_MID_EPOCH = textwrap.dedent(
    """
    import sys, torch, featstore
    torch.set_num_threads(1)
    fs = featstore.FeatureStore.open(sys.argv[1])["grid"]
    for i, batch in enumerate(fs.batches(8, order="block", read="direct", labels=False, block_bytes=1 << 20)):
        if i == 2:
            break  # the read-ahead thread is still reading blocks
    """
)


def test_a_script_that_stops_mid_epoch_exits_0(tmp_path):
    """Run five times: before the fix, 3-4 runs in 6 aborted on this machine."""
    store = FeatureStore.create(tmp_path / "s")
    rng = np.random.default_rng(0)
    with store.create_feature_set("grid", 768, (64, 384), "float16") as w:  # 36 MiB, 48 KiB a row
        for a in range(0, 768, 128):
            w.write(a, rng.standard_normal((128, 64, 384), dtype=np.float32).astype(np.float16))
    for run in range(5):
        done = subprocess.run(
            [sys.executable, "-c", STOP_MID_EPOCH, str(tmp_path / "s")], capture_output=True, text=True
        )
        assert done.returncode == 0, (run, done.returncode, done.stderr[-500:])


def test_stop_all_stops_and_joins_every_live_thread():
    """stop_all calls each thread's stop and waits for it: a thread that waits for its stop returns."""
    import threading

    stopped = threading.Event()
    thread = threads.start(stopped.wait, "featstore-test", stop=stopped.set)
    assert thread in threads.live()
    threads.stop_all(timeout=5)
    assert not thread.is_alive() and thread not in threads.live()
