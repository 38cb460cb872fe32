"""featstore.probe: many linear heads in one pass on a small generated store."""

import numpy as np
import pytest
import torch
from _util import write_probe_store as write_store

from featstore import FeatureStore
from featstore.probe import make_task, train_probes, wilson_interval
from featstore.spatial.join import row_targets
from featstore.spatial.split import split_indices
from featstore.spatial.synth import generate

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def ds(tmp_path_factory):
    return generate(tmp_path_factory.mktemp("ds") / "spatial", n=400, size=32, workers=1, progress=False)


@pytest.fixture(scope="module")
def store(tmp_path_factory, ds):
    return write_store(tmp_path_factory.mktemp("store"), ds)


FAST = dict(lrs=(3e-3, 1e-2), wds=(0.0, 1e-3), epochs=6, batch_size=64)


def by_head(out):
    return {(r["key"], r["view"]): r for r in out["results"] if r["head"] == "linear"}


def test_separable_high_noise_chance(store, ds):
    out = train_probes(store, ds, "toy/*", "relation", **FAST)
    r = by_head(out)
    assert set(r) == {
        ("toy/layer_0/cls", "vector"),
        ("toy/layer_1/cls", "vector"),
        ("toy/layer_1/patch", "flat"),
        ("toy/layer_1/patch", "mean"),
    }
    assert r["toy/layer_1/cls", "vector"]["test_acc"] >= 0.9
    assert r["toy/layer_1/patch", "flat"]["test_acc"] >= 0.9
    assert r["toy/layer_0/cls", "vector"]["test_acc"] < 0.5  # chance is 0.25
    # the mean over the grid loses where the signal was: near chance
    assert r["toy/layer_1/patch", "mean"]["test_acc"] < 0.5
    res = r["toy/layer_1/cls", "vector"]
    assert res["ci_low"] <= res["test_acc"] <= res["ci_high"]
    assert set(res["per_relation"]) == {"left", "right", "top", "bottom"}
    assert sum(v["n"] for v in res["per_relation"].values()) == res["n_test"]
    assert len(out["sweep"]) == 4 * 4  # 4 (set, view) pairs x 4 settings
    assert res["layer"] == "layer_1" and res["pooling"] == "cls" and res["encoder"] == "toy"


def test_shuffled_target_is_chance(store, ds):
    rng = np.random.default_rng(1)
    shuffled = ds.add_column("shuffled", rng.permutation(np.asarray(row_targets(ds).relation)))
    out = train_probes(store, shuffled, ["toy/layer_1/cls"], "shuffled", **FAST)
    acc = out["results"][0]["test_acc"]
    assert acc < 0.45, acc  # chance 0.25 on 4 classes
    # the same column unshuffled is learnt
    same = ds.add_column("rel", np.asarray(row_targets(ds).relation))
    assert train_probes(store, same, "toy/layer_1/cls", "rel", **FAST)["results"][0]["test_acc"] >= 0.9


def test_binary_task(store, ds, tmp_path):
    out = train_probes(store, ds, "toy/layer_0/cls", "binary", **FAST)
    res = out["results"][0]
    assert out["settings"]["classes"] == ["false", "true"]
    assert res["chance"] == 0.5 and res["test_acc"] < 0.7  # noise features
    assert res["n_test"] == out["settings"]["rows"]["test"]
    # features where a per-relation direction says whether the row holds: the relation-conditioned head
    # (one output per relation) learns it, though the direction's sign flips between relations
    rt = row_targets(ds)
    rng = np.random.default_rng(5)
    dirs = rng.standard_normal((4, 16)).astype(np.float32)
    sign = np.where(rt.label == 1, 1.0, -1.0).astype(np.float32)
    x = rng.standard_normal((len(ds), 16)).astype(np.float32) + 1.5 * sign[:, None] * dirs[rt.relation]
    s = FeatureStore.create(tmp_path / "b")
    with s.create_feature_set("toy/binary", len(ds), (16,), "float32", {}, rt.label) as w:
        w.write(0, x)
    out = train_probes(
        FeatureStore.open(tmp_path / "b"), ds, "toy/binary", "binary", heads="linear,ridge,logistic", **FAST
    )
    for res in out["results"]:  # linear, ridge (one per relation) and logistic (one logit per relation) learn it
        assert res["test_acc"] >= 0.9, res
    assert [r["head"] for r in out["results"]] == ["linear", "ridge", "logistic"]
    assert out["results"][1]["params"] == 4 * (16 + 1)


def test_closed_form_heads_on_every_view(store, ds):
    out = train_probes(store, ds, "toy/layer_1/*", "relation", heads=["ridge", "logistic"], cs=(0.01, 1.0))
    got = {(r["key"], r["head"], r["view"]): r for r in out["results"]}
    assert set(got) == {
        (k, h, v)
        for h in ("ridge", "logistic")
        for k, v in [("toy/layer_1/cls", "vector"), ("toy/layer_1/patch", "flat"), ("toy/layer_1/patch", "mean")]
    }
    for h in ("ridge", "logistic"):  # the planted signal is learnt; the grid's mean loses it, as for linear heads
        assert got["toy/layer_1/cls", h, "vector"]["test_acc"] >= 0.9
        assert got["toy/layer_1/patch", h, "flat"]["test_acc"] >= 0.9
        assert got["toy/layer_1/patch", h, "mean"]["test_acc"] < 0.5
    assert got["toy/layer_1/patch", "ridge", "flat"]["dim"] == 32 and out["skipped"] == []
    assert len(out["sweep"]) == 3 * (len(out["settings"]["alphas"]) + 2)


def test_same_seed_same_numbers(store, ds):
    a = train_probes(store, ds, "toy/layer_1/*", "relation", seed=3, **FAST)
    b = train_probes(store, ds, "toy/layer_1/*", "relation", seed=3, **FAST)
    assert a == b
    c = train_probes(store, ds, "toy/layer_1/*", "relation", seed=4, **FAST)
    assert c["settings"]["rows"] != a["settings"]["rows"] or c["sweep"] != a["sweep"]


def test_split_never_shares_an_image(ds):
    # rows sharing an image: duplicate every image 3 times
    import datasets

    rep = datasets.concatenate_datasets([ds, ds, ds])
    for seed in range(3):
        parts = split_indices(rep, seed, (0.7, 0.15, 0.15))
        paths = {k: set(np.asarray(rep["image_path"])[v]) for k, v in parts.items()}
        assert not paths["train"] & paths["validation"] and not paths["train"] & paths["test"]
        assert not paths["validation"] & paths["test"]
        assert sum(len(v) for v in parts.values()) == len(rep)


def test_task_and_errors(store, ds):
    t = make_task(ds, "relation")
    assert (np.asarray(ds["label"])[t.rows] == 1).all()
    with pytest.raises(ValueError, match="task must be"):
        make_task(ds, "nope")
    with pytest.raises(ValueError, match="not an integer column"):
        make_task(ds, "spatial_relation")
    with pytest.raises(ValueError, match="no feature set"):
        train_probes(store, ds, "clip/*", "relation")
    assert wilson_interval(0, 0) == (0.0, 1.0)
    lo, hi = wilson_interval(50, 100)
    assert lo < 0.5 < hi and abs((0.5 - lo) - (hi - 0.5)) < 1e-9


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("cache", ["device", "pinned"])
def test_probes_on_cuda_match_the_cpu(store, ds, cache, monkeypatch):
    """The same probes trained from the store's CUDA batches reach the CPU's accuracies (float32 sums in
    another order: equal within a few test rows), and a CUDA run repeats itself exactly."""
    from featstore.batches import loader

    real = loader.BatchLoader.__init__

    def with_cache(self, *args, **kw):  # the probe's CUDA loaders take this path; its CPU ones stay CPU
        if torch.device(kw.get("device") or "cpu").type == "cuda":
            kw["cache"] = cache
        real(self, *args, **kw)

    monkeypatch.setattr(loader.BatchLoader, "__init__", with_cache)
    cpu = by_head(train_probes(store, ds, "toy/*", "relation", device="cpu", **FAST))
    gpu_out = train_probes(store, ds, "toy/*", "relation", device="cuda", **FAST)
    assert gpu_out == train_probes(store, ds, "toy/*", "relation", device="cuda", **FAST)
    for key, r in by_head(gpu_out).items():
        assert abs(r["test_acc"] - cpu[key]["test_acc"]) <= 0.05, key
