"""A killed extraction, run again with the same arguments, continues and ends bit-identical to an
uninterrupted run (tiny DINOv2; the killed run is the real command line in a subprocess, SIGKILLed at
a crash point of the writer; the reference and the resumed run are in-process, single-threaded)."""

import os
import signal
import subprocess
import sys

import pytest
import torch
from _encoder_models import make_dataset, make_dinov2, offline_hub

import featstore
from featstore import FeatureStore


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    root = tmp_path_factory.mktemp("resume")
    return make_dinov2(root / "model"), make_dataset(root, n_images=14, repeats=(2, 9))


OPTIONS = dict(layers="2,last", pooling="cls,patch", batch_size=3, commit_every=1, num_workers=1, store_dtype="float32")


def extract_here(model, dataset, out):
    torch.set_num_threads(1)
    with offline_hub():
        return featstore.extract(str(dataset), "dinov2", str(model), out, progress=False, **OPTIONS)


def run_extract(model, dataset, out, crash_at=None):
    env = dict(os.environ, HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1")
    env.pop("FEATSTORE_CRASH_AT", None)
    if crash_at:
        env["FEATSTORE_CRASH_AT"] = crash_at
    args = [
        sys.executable,
        "-m",
        "featstore",
        "extract",
        "--dataset",
        str(dataset),
        "--encoder",
        "dinov2",
        "--model",
        str(model),
        "--layers",
        "2,last",
        "--pooling",
        "cls,patch",
        "--out",
        str(out),
        "--batch-size",
        "3",
        "--commit-every",
        "1",
        "--num-workers",
        "1",
        "--no-progress",
        "--store-dtype",
        "float32",
    ]
    proc = subprocess.run(args, env=env, capture_output=True, text=True, timeout=300)
    return proc.returncode, proc.stdout + proc.stderr


def files(out):
    return {p.relative_to(out).as_posix(): p.read_bytes() for p in sorted(out.rglob("*.safetensors"))}


@pytest.fixture(scope="module")
def reference(inputs, tmp_path_factory):
    out = tmp_path_factory.mktemp("reference")
    extract_here(*inputs, out)
    return files(out)


# 4 feature sets commit after every batch of 3 images: data-synced:6 kills inside the second batch's commit,
# after two sets committed it and before the other two did, so the sets disagree on what is committed
@pytest.mark.parametrize("crash_at", ["data-synced:6"])
def test_killed_extraction_resumes_bit_identical(inputs, reference, tmp_path, crash_at):
    out = tmp_path / "f"
    code, text = run_extract(*inputs, out, crash_at=crash_at)
    assert code == -signal.SIGKILL, text
    partial = FeatureStore.open(out)
    partial.verify()
    assert any(not partial.info(k).complete for k in partial.keys()) or len(partial) < 4
    committed = sum(partial.info(k).rows_committed for k in partial.keys())
    result = extract_here(*inputs, out)
    assert 0 < result.images_encoded < 14 and committed > 0  # it continued, it did not start over
    assert files(out) == reference
    FeatureStore.open(out).verify()
    assert extract_here(*inputs, out).already_complete
