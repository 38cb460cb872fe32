"""torch.distributed: the epoch partition (pure), shard writers and their progress files (in process),
and on 2 CPU processes under torchrun (gloo): extraction bit-identical to a single process, a killed rank
resumed, fs.batches' shares and a probe with DistributedDataParallel."""

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from featstore import FeatureStore
from featstore.distributed import resolve_ranks, shard_order, split_evenly
from featstore.errors import WriterConflictError
from featstore.store.shards import RankShard, fold_progress, progress_files

TESTS = Path(__file__).parent


# ---- the partition of an epoch ---------------------------------------------------------------
@pytest.mark.parametrize("drop_last", [False, True])
@pytest.mark.parametrize("n", [0, 1, 5, 8, 13])
@pytest.mark.parametrize("world_size", [1, 2, 3, 4])
def test_shard_order_is_distributed_samplers(n, world_size, drop_last):
    order = np.random.default_rng(n).permutation(n)
    shares = [shard_order(order, r, world_size, drop_last) for r in range(world_size)]
    for r, share in enumerate(shares):
        sampler = torch.utils.data.DistributedSampler(range(n), world_size, r, shuffle=False, drop_last=drop_last)
        assert share.tolist() == [int(order[i]) for i in sampler]
    assert len({len(s) for s in shares}) == 1
    every = np.concatenate(shares)
    if drop_last:  # disjoint; only the tail that does not divide evenly is left out
        assert len(set(every.tolist())) == len(every) == n - n % world_size
    else:  # complete; padded by wrapping around, so at most world_size - 1 rows twice
        assert set(every.tolist()) == set(order.tolist()) and len(every) - n < world_size


def test_loader_shares_partition_every_epoch(tmp_path):
    store = FeatureStore.create(tmp_path)
    with store.create_feature_set("x", 23, (2,), "float32") as w:
        w.write(0, torch.arange(46, dtype=torch.float32).view(23, 2))
    fs = FeatureStore.open(tmp_path)["x"]
    rows = np.arange(3, 23)
    for epoch in range(3):
        shares = [
            np.concatenate(
                [
                    b.indices.numpy()
                    for b in fs.batches(4, rows=rows, seed=1, epoch=epoch, rank=r, world_size=3, prefetch=0)
                ]
            )
            for r in range(3)
        ]
        whole = fs.batches(4, rows=rows, seed=1, rank=0, world_size=1).epoch_order(epoch)
        assert [s.tolist() for s in shares] == [shard_order(whole, r, 3).tolist() for r in range(3)]
        assert set(np.concatenate(shares).tolist()) == set(rows.tolist())
        assert len(fs.batches(4, rows=rows, rank=1, world_size=3)) == 2  # 7 rows per rank
    first = fs.batches(4, rows=rows, seed=1, rank=0, world_size=3).epoch_order(0)
    assert first.tolist() != fs.batches(4, rows=rows, seed=1, rank=0, world_size=3).epoch_order(1).tolist()
    with pytest.raises(ValueError, match="both rank and world_size"):
        fs.batches(4, rank=1)
    with pytest.raises(ValueError, match="0 <= rank < world_size"):
        fs.batches(4, rank=2, world_size=2)
    with pytest.raises(ValueError, match="same seed"):
        fs.batches(4, seed=None, rank=0, world_size=2)
    assert resolve_ranks(None, None).world_size == 1  # no process group here
    assert [len(split_evenly(10, r, 4)) for r in range(4)] == [3, 3, 2, 2]


# ---- shard writers and progress files, in one process ------------------------------------------
def test_shards_join_only_an_owned_set_and_fold_into_the_manifest(tmp_path):
    store = FeatureStore.create(tmp_path)
    data = torch.randn(10, 3)
    owner = store.create_feature_set("s/x", 10, (3,), "float32", {"m": 1})
    shard = RankShard(FeatureStore.open(tmp_path), rank=1)
    w1 = shard.join("s/x", {"m": 1})
    w1.write(4, data[4:10])
    w1.commit()
    assert json.loads(progress_files(tmp_path, "s/x")[0].read_text())["committed"] == [[4, 10]]
    assert FeatureStore.open(tmp_path).info("s/x").committed == []  # only rank 0 writes the manifest
    with pytest.raises(WriterConflictError, match="header differs"):
        RankShard(store, rank=2).join("s/x", {"m": 2})
    with pytest.raises(WriterConflictError, match="another process"):  # an independent writer is still refused
        FeatureStore.open(tmp_path).create_feature_set("s/x", 10, (3,), "float32", {"m": 1}, resume=True)
    with pytest.raises(WriterConflictError, match="rank 0 does"):
        w1.finish()
    owner.write(0, data[0:4])
    owner.commit()
    assert fold_progress(owner) == 6 and progress_files(tmp_path, "s/x") == []
    owner.finish()
    shard.close()
    done = FeatureStore.open(tmp_path)
    done.verify()
    assert torch.equal(done["s/x"][:], data) and done.info("s/x").block_crc32[0] is not None

    # nobody owns the set: a shard writer refuses to join it
    FeatureStore.open(tmp_path).create_feature_set("s/y", 4, (3,), "float32").close()
    with pytest.raises(WriterConflictError, match="not held by rank 0"):
        RankShard(FeatureStore.open(tmp_path), rank=1).join("s/y", {})


def test_stale_progress_is_ignored(tmp_path):
    store = FeatureStore.create(tmp_path)
    owner = store.create_feature_set("s/x", 6, (2,), "float32")
    shard = RankShard(FeatureStore.open(tmp_path), rank=1)
    shard.join("s/x", {}).write(0, torch.ones(6, 2))
    shard.commit()
    shard.close()
    path = progress_files(tmp_path, "s/x")[0]
    path.write_text(path.read_text().replace('"created_at": ', '"created_at": 1'))  # another set of that key
    assert fold_progress(owner) == 0 and owner.committed_ranges == []
    owner.close()


# ---- torchrun, 2 CPU processes -----------------------------------------------------------------
EXTRACT = [
    "--encoder",
    "dinov2",
    "--layers",
    "2,last",
    "--pooling",
    "cls,patch",
    "--batch-size",
    "3",
    "--commit-every",
    "1",
    "--num-workers",
    "0",
    "--no-progress",
    "--store-dtype",
    "float32",
]


def torchrun(args, timeout=240, **env_extra):
    env = dict(os.environ, HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1", FEATSTORE_DIST_TIMEOUT_S="120", **env_extra)
    for name in ("FEATSTORE_CRASH_AT", "FEATSTORE_CRASH_RANK"):
        if name not in env_extra:
            env.pop(name, None)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", *args]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout, cwd=TESTS.parent)
    return proc.returncode, proc.stdout + proc.stderr


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    from _encoder_models import make_dataset, make_dinov2

    root = tmp_path_factory.mktemp("dist")
    return make_dinov2(root / "model"), make_dataset(root, n_images=14, repeats=(2, 9))


@pytest.fixture(scope="module")
def reference(inputs, tmp_path_factory):
    out = tmp_path_factory.mktemp("reference")
    assert extract_one_process(*inputs, out) == 0
    return snapshot(out)


def extract_one_process(model, dataset, out):
    from _encoder_models import offline_hub

    from featstore.cli import main

    with offline_hub():
        return main(["extract", "--dataset", str(dataset), "--model", str(model), "--out", str(out), *EXTRACT])


def snapshot(out: Path):
    """Every feature-set file's bytes, and the manifest but for its timestamps (and the checksums that
    cover them, or the .pt export: torch.save writes a new serialization id each time)."""
    manifest = json.loads((out / "featstore.json").read_text())
    for record in manifest["feature_sets"].values():
        record.pop("created_at"), record.pop("finished_at")
        record["checksum"].pop("entry"), record["checksum"].pop("export")
    return {p.relative_to(out).as_posix(): p.read_bytes() for p in sorted(out.rglob("*.safetensors"))}, manifest


def encoded(text: str) -> int:
    return int(re.search(r"\((\d+) of 14 distinct images encoded", text).group(1))


PROBE = dict(lrs=(0.003, 0.01), wds=(0.0,), epochs=4, batch_size=32)


@pytest.fixture(scope="module")
def one_launch(inputs, tmp_path_factory):
    """One torchrun of tests/base/dist_worker.py: featstore.extract in the process group, fs.batches' shares, a probe."""
    from _util import write_probe_store as write_store

    from featstore.spatial import load_from_disk
    from featstore.spatial.synth import generate

    model, dataset = inputs
    root = tmp_path_factory.mktemp("launch")
    generate(root / "spatial", n=200, size=32, workers=1, progress=False)
    write_store(root / "store", load_from_disk(root / "spatial"))
    extract_args = dict(
        dataset=str(dataset),
        encoder="dinov2",
        model=str(model),
        out=str(root / "features"),
        layers="2,last",
        pooling="cls,patch",
        batch_size=3,
        commit_every=1,
        num_workers=0,
        progress=False,
        store_dtype="float32",
    )
    probe = [
        "probe",
        "--store",
        str(root / "store"),
        "--dataset",
        str(root / "spatial"),
        "--out",
        str(root / "out"),
        "--task",
        "relation",
        "--lrs",
        "0.003,0.01",
        "--wds",
        "0",
        "--epochs",
        "4",
        "--batch-size",
        "32",
    ]
    code, text = torchrun([str(TESTS / "dist_worker.py"), json.dumps(extract_args), str(root / "store"), *probe])
    assert code == 0, text
    return root, text


def test_torchrun_extraction_is_bit_identical(one_launch, reference):
    root, text = one_launch
    assert encoded(text) == 14 and text.count("wrote 4 feature set(s)") == 1  # one summary, of the whole job
    assert snapshot(root / "features") == reference
    assert not any(p.is_file() for p in (root / "features" / ".featstore.progress").rglob("*"))


def test_probe_under_torchrun_matches_one_process(one_launch):
    from featstore.probe import train_probes

    root, text = one_launch
    assert text.count("wrote ") == 2  # the extraction's and the probe's summaries: rank 0 alone reports
    dist_out = json.loads((root / "out" / "probe_results.json").read_text())
    one = train_probes(root / "store", root / "spatial", "*", "relation", **PROBE)
    assert dist_out["settings"]["world_size"] == 2 and one["settings"]["world_size"] == 1
    for d, s in zip(dist_out["results"], one["results"]):
        assert (d["key"], d["head"], d["view"]) == (s["key"], s["head"], s["view"])
        assert s["ci_low"] <= d["test_acc"] <= s["ci_high"], (d, s)  # within the seed's noise
        if d["key"] == "toy/layer_1/cls" or d["view"] == "flat":  # the planted signal is learnt
            assert d["test_acc"] > 0.9 and s["test_acc"] > 0.9


def test_killed_rank_resumes_bit_identical(inputs, reference, tmp_path):
    model, dataset = inputs
    args = [
        "-m",
        "featstore",
        "extract",
        "--dataset",
        str(dataset),
        "--model",
        str(model),
        "--out",
        str(tmp_path),
        *EXTRACT,
    ]
    # rank 1 dies by SIGKILL while writing its second batch (8 writes per batch: 4 sets x 2 row runs);
    # torchrun stops rank 0 and fails
    code, text = torchrun(args, FEATSTORE_CRASH_AT="data-written:10", FEATSTORE_CRASH_RANK="1")
    assert code != 0 and "Signal 9 (SIGKILL)" in text, text
    partial = FeatureStore.open(tmp_path)
    partial.verify()
    assert not any(partial.info(k).complete for k in partial.keys())
    rank1 = [p for k in partial.keys() for p in progress_files(tmp_path, k) if p.name.endswith("rank-00001.json")]
    assert len(rank1) == 4  # rank 1 had committed its first batch in every set
    code, text = torchrun(args)
    assert code == 0, text
    assert 0 < encoded(text) < 14  # it continued, it did not start over
    assert snapshot(tmp_path) == reference
    FeatureStore.open(tmp_path).verify()


def _two_spawned_ranks(target, n_reports: int) -> list[tuple]:
    """Run ``target(rank, port, queue)`` in two spawned processes (a gloo group on a free port); return the
    first ``n_reports`` items they put on the queue, then kill both."""
    import multiprocessing
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    ctx = multiprocessing.get_context("spawn")
    report = ctx.Queue()
    procs = [ctx.Process(target=target, args=(r, port, report), daemon=True) for r in range(2)]
    for p in procs:
        p.start()
    try:
        return [report.get(timeout=120) for _ in range(n_reports)]
    finally:
        for p in procs:
            p.kill()
            p.join()


def test_a_failed_rank_stops_the_others_with_its_error():
    """A step of rank 0 that fails raises on every rank with its message; a rank that waits in a
    collective for a rank gone quiet gives up after the process group's timeout (3 s here)."""
    from dist_worker import failing_rank

    seen = {(rank, kind): message for rank, kind, message in _two_spawned_ranks(failing_rank, 3)}
    assert seen[(0, "ValueError")] == "cannot take the feature sets"
    assert seen[(1, "DistributedError")] == "rank 0 failed: ValueError: cannot take the feature sets"
    assert re.fullmatch(r"RuntimeError after [2-9] s", seen[(0, "barrier")])  # the 3 s timeout, not a hang


def test_a_rank_failing_mid_loop_stops_the_others_at_once():
    """A rank other than 0 that fails between collectives makes the others raise DistributedError with
    its message at their next all_sum_or_fail, well before the process group's 30 s timeout."""
    import time

    from dist_worker import rank_failing_in_a_loop

    start = time.perf_counter()
    seen = {rank: (kind, message, sums) for rank, kind, message, sums in _two_spawned_ranks(rank_failing_in_a_loop, 2)}
    assert seen[1] == ("OSError", "image 7 is unreadable", [2, 4])
    assert seen[0] == ("DistributedError", "rank 1 failed: OSError: image 7 is unreadable", [2, 4])
    assert time.perf_counter() - start < 30  # told, not timed out
