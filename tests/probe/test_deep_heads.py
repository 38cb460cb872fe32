"""attentive and mlp heads: trained many at once with the linear heads, one gather per batch for all."""

import numpy as np
import pytest
import torch

from featstore import FeatureStore
from featstore.batches import readers
from featstore.cli import main
from featstore.probe import train_probes

torch.set_num_threads(1)

N, TOKENS, DIM = 1200, 16, 8
FAST = dict(lrs=(3e-3, 1e-2), wds=(0.0,), epochs=8, batch_size=64)


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """A cheap dataset whose ``cls`` column is where the signal is on a 4x4 grid whose tokens carry a
    position code (as a ViT's do), and a vector set whose class is an XOR of two signs (no linear head
    can learn it, one hidden layer can)."""
    import datasets

    rng = np.random.default_rng(0)
    cls = rng.integers(0, 4, N)
    xor = ((rng.standard_normal(N) > 0) ^ (rng.standard_normal(N) > 0)).astype(np.int64)
    ds = datasets.Dataset.from_dict(
        {"image_path": [f"img_{i}.png" for i in range(N)], "cls": cls.tolist(), "xor": xor.tolist()}
    )
    pos = rng.standard_normal((TOKENS, DIM))
    g = rng.standard_normal((N, TOKENS, DIM)) + pos
    g[np.arange(N), cls * 4 + 1, 0] += 4.0  # a marker on one of four tokens: which one is the class
    v = rng.standard_normal((N, 16))
    a, b = np.abs(v[:, 0]) + 0.3, np.abs(v[:, 1]) + 0.3
    sign = np.where(rng.standard_normal(N) > 0, 1.0, -1.0)
    v[:, 0], v[:, 1] = sign * a, np.where(xor == 1, -sign, sign) * b  # xor: the two signs differ
    root = tmp_path_factory.mktemp("store")
    store = FeatureStore.create(root)
    with store.create_feature_set("toy/grid", N, (TOKENS, DIM), "float32", {"pooling": "patch"}) as w:
        w.write(0, g.astype(np.float32))
    with store.create_feature_set("toy/xor", N, (16,), "float32", {"pooling": "cls"}) as w:
        w.write(0, v.astype(np.float32))
    return ds, FeatureStore.open(root)


def test_attentive_reads_the_grid_with_few_parameters(data, monkeypatch):
    ds, store = data
    loaders = []
    real = readers.FeatureSet.batches

    def counted(self, *a, **k):
        loaders.append(self.key)
        return real(self, *a, **k)

    monkeypatch.setattr(readers.FeatureSet, "batches", counted)
    # the queries learn from a larger learning rate than linear heads need: the sweep covers both
    out = train_probes(store, ds, "toy/grid", "cls", heads="linear,attentive,mlp", **{**FAST, "lrs": (1e-2, 1e-1)})
    got = {(r["head"], r["view"]): r for r in out["results"]}
    assert set(got) == {("linear", "flat"), ("linear", "mean"), ("attentive", "grid"), ("mlp", "flat"), ("mlp", "mean")}
    # one training loader and one per evaluated split, whatever the number of head kinds: the gather is shared
    assert loaders == ["toy/grid"] * 3
    att, flat = got["attentive", "grid"], got["linear", "flat"]
    assert att["test_acc"] >= 0.85, att
    assert flat["test_acc"] >= 0.9
    assert got["linear", "mean"]["test_acc"] < 0.5  # the mean over tokens loses where the marker was
    # 4 queries (no head reaches 10x on this tiny grid), their mix, a classifier shared by them, weights on
    # each query's pooled (row, col), biases
    assert att["params"] == 4 * DIM + 4 + DIM * 4 + 4 * 2 * 4 + 4 and att["params"] * 4 < flat["params"]
    assert len([r for r in out["sweep"] if r["head"] == "attentive"]) == 2


def test_queries_follow_the_grid_size_and_keep_the_head_small():
    """The most queries (4, 2, 1) that keep the head 10x smaller than a flat linear head: on the demo's grids
    (7x7 x 64, 8x8 x 64, 4x4 x 96, four classes) it is; a grid too small for any head gets 4 queries."""
    from featstore.probe.attentive import AttentiveGroup, queries_for

    assert [queries_for(49, 64, 4), queries_for(64, 64, 4), queries_for(16, 96, 4)] == [4, 4, 2]
    assert queries_for(16, 8, 4) == 4  # 1 query: 53 parameters against 516, under 10x: none can, so 4
    for tokens, dim in ((49, 64), (64, 64), (16, 96)):
        g = AttentiveGroup(dim, [(1e-2, 0.0)], 4, tokens)
        flat = tokens * dim * 4 + 4
        assert g.head_params == g.n_queries * dim + g.n_queries + dim * 4 + g.n_queries * 2 * 4 + 4
        assert flat >= 10 * g.head_params, (tokens, dim, g.head_params)
        g.setup(torch.device("cpu"), torch.zeros(dim), torch.ones(dim))
        assert sum(p[0].numel() for p in g.params()) == g.head_params  # every parameter counted, per head
        assert g.logits(torch.randn(3, tokens, dim)).shape == (3, 1, 4)


def test_attentive_knows_where_tokens_are_without_a_position_code(tmp_path):
    """Tokens that carry no position code (as a random-init encoder's barely do): the class is where the marked
    token is. Pooling alone is blind to token order; the pooled grid coordinates say where the queries looked."""
    import datasets
    from featstore.probe.attentive import grid_coordinates

    np.testing.assert_allclose(grid_coordinates(4).numpy(), [[-1, -1], [-1, 1], [1, -1], [1, 1]])
    assert grid_coordinates(6).shape == (6, 1)  # not a square grid: the token index, scaled
    rng = np.random.default_rng(5)
    cls = rng.integers(0, 4, N)
    g = rng.standard_normal((N, TOKENS, DIM))
    where = np.array([0, 3, 12, 15])[cls]  # the marker in one corner of the 4x4 grid: the corner is the class
    g[np.arange(N), where, 0] += 5.0
    ds = datasets.Dataset.from_dict({"image_path": [f"img_{i}.png" for i in range(N)], "cls": cls.tolist()})
    store = FeatureStore.create(tmp_path)
    with store.create_feature_set("plain/grid", N, (TOKENS, DIM), "float32", {"pooling": "patch"}) as w:
        w.write(0, g.astype(np.float32))
    out = train_probes(
        FeatureStore.open(tmp_path), ds, "plain/grid", "cls", heads="attentive", **{**FAST, "lrs": (1e-1,)}
    )
    (att,) = out["results"]
    assert att["test_acc"] >= 0.9, att


def test_mlp_learns_what_no_linear_head_can(data):
    ds, store = data
    out = train_probes(store, ds, "toy/xor", "xor", heads="linear,mlp,ridge", **{**FAST, "epochs": 15})
    got = {r["head"]: r for r in out["results"]}
    assert got["mlp"]["test_acc"] >= 0.85, got["mlp"]
    assert got["linear"]["test_acc"] < 0.7 and got["ridge"]["test_acc"] < 0.7
    assert got["mlp"]["params"] == 16 * 256 + 256 + 256 * 2 + 2


def test_attentive_on_pooled_sets_is_refused_before_any_work(data, tmp_path, capsys):
    ds, store = data
    with pytest.raises(ValueError, match=r"head 'attentive' needs patch grids .* toy/xor are pooled"):
        train_probes(store, "no-such-dataset", "toy/*", "cls", heads="attentive")
    out = tmp_path / "o"
    assert (
        main(["probe", "--store", str(store.root), "--dataset", "nowhere", "--head", "attentive", "--out", str(out)])
        == 2
    )
    assert "needs patch grids" in capsys.readouterr().err and not out.exists()
