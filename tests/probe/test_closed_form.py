"""ridge and logistic heads checked against scikit-learn on the same split (scikit-learn is a test dependency only)."""

import numpy as np
import pytest
import torch

from featstore import FeatureStore
from featstore.probe import train_probes
from featstore.probe.ridge import Gram, Rows, dual_form, ridge_targets, shifted_solves

sklearn = pytest.importorskip("sklearn")
from sklearn.linear_model import LogisticRegression, Ridge, RidgeClassifierCV  # noqa: E402
from sklearn.model_selection import PredefinedSplit  # noqa: E402
from sklearn.pipeline import make_pipeline  # noqa: E402
from sklearn.preprocessing import StandardScaler  # noqa: E402

torch.set_num_threads(1)

N, DIM, CLASSES = 1500, 24, 4
ALPHAS = tuple(float(a) for a in np.logspace(-2, 5, 50))
CS = tuple(float(c) for c in np.logspace(-3, 2, 6))


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """A cheap dataset (an integer column ``cls``, one image per row) and a set where ``cls`` is weakly planted
    (accuracy depends on the strength), stored float32 so scikit-learn sees exactly the same numbers."""
    import datasets

    rng = np.random.default_rng(0)
    cls = rng.integers(0, CLASSES, N)
    ds = datasets.Dataset.from_dict({"image_path": [f"img_{i}.png" for i in range(N)], "cls": cls.tolist()})
    means = rng.standard_normal((CLASSES, DIM))
    scale = np.linspace(0.2, 3.0, DIM)  # features of unequal scale: standardising matters to logistic
    x = ((rng.standard_normal((N, DIM)) + 0.35 * means[cls]) * scale).astype(np.float32)
    root = tmp_path_factory.mktemp("store")
    store = FeatureStore.create(root)
    with store.create_feature_set("toy/layer_1", N, (DIM,), "float32", {"layer": "layer_1"}) as w:
        w.write(0, x)
    return ds, FeatureStore.open(root), x.astype(np.float64), cls


def test_ridge_coefficients_equal_sklearn_for_every_strength(data):
    ds, store, x, cls = data
    train = np.arange(0, N, 2)
    y = ridge_targets(torch.as_tensor(cls[train]), CLASSES)
    g = Gram(DIM, CLASSES, torch.device("cpu"))
    for lo in range(0, len(train), 128):  # streamed in batches, as the probe run reads them
        g.add(torch.as_tensor(x[train[lo : lo + 128]]).float(), y[lo : lo + 128])
    path = g.solve(torch.tensor(ALPHAS, dtype=torch.float64))
    for alpha in ALPHAS:
        ref = Ridge(alpha=alpha).fit(x[train], y.numpy())
        w, b = path.coef(alpha)
        np.testing.assert_allclose(w.numpy().T, ref.coef_, rtol=1e-4, atol=1e-4 * np.abs(ref.coef_).max())
        np.testing.assert_allclose(b.numpy(), ref.intercept_, rtol=1e-4, atol=1e-6)
    # predictions of every strength at once equal the per-strength solution
    pred = path.predict(torch.as_tensor(x[:5]))
    w, b = path.coef(ALPHAS[1])
    np.testing.assert_allclose(pred[1].numpy(), (torch.as_tensor(x[:5]) @ w + b).numpy(), rtol=1e-9)
    with pytest.raises(KeyError, match="not one of"):
        path.coef(0.123)


def test_dual_form_coefficients_equal_sklearn_when_wider_than_rows():
    """More features than rows (a flattened patch grid): the dual (Gram) form gives, for every strength, the
    coefficients and intercepts of sklearn's Ridge, and the same predictions as the primal form."""
    rng = np.random.default_rng(3)
    n, dim = 120, 300
    assert dual_form(dim, n) and not dual_form(DIM, N)
    x = (rng.standard_normal((n, dim)) * np.linspace(0.5, 2.0, dim) + 0.3).astype(np.float32)
    y = ridge_targets(torch.as_tensor(rng.integers(0, CLASSES, n)), CLASSES)
    dual, primal = Rows(dim, CLASSES, torch.device("cpu")), Gram(dim, CLASSES, torch.device("cpu"))
    for lo in range(0, n, 32):
        for acc in (dual, primal):
            acc.add(torch.as_tensor(x[lo : lo + 32]), y[lo : lo + 32])
    a = torch.tensor(ALPHAS, dtype=torch.float64)
    dpath, ppath = dual.solve(a), primal.solve(a)
    assert dpath.weights.shape == (len(ALPHAS), dim, CLASSES)
    x64 = x.astype(np.float64)
    for alpha in ALPHAS:
        ref = Ridge(alpha=alpha).fit(x64, y.numpy())
        w, b = dpath.coef(alpha)
        np.testing.assert_allclose(w.numpy().T, ref.coef_, rtol=1e-4, atol=1e-4 * np.abs(ref.coef_).max())
        np.testing.assert_allclose(b.numpy(), ref.intercept_, rtol=1e-4, atol=1e-6)
    xq = torch.as_tensor(rng.standard_normal((9, dim)))
    np.testing.assert_allclose(dpath.predict(xq).numpy(), ppath.predict(xq).numpy(), rtol=1e-6, atol=1e-8)


@pytest.mark.parametrize("shape", [(50, 8), (1, 3), (40, 90)])
def test_tridiagonal_solves_equal_the_eigendecomposition(shape):
    """LAPACK's tridiagonal route (sytrd + one tridiagonal solve per strength) gives the eigendecomposition's
    (K + alpha I)⁻¹ R for every strength, on a full-rank and on a rank-deficient K (more columns than rows)."""
    rng = np.random.default_rng(5)
    x = torch.as_tensor(rng.standard_normal(shape))
    k = x.T @ x if shape[0] >= shape[1] else x @ x.T
    r = torch.as_tensor(rng.standard_normal((len(k), 3)))
    a = torch.tensor(ALPHAS, dtype=torch.float64)
    tri, eig = shifted_solves(k, r, a, tridiagonal=True), shifted_solves(k, r, a, tridiagonal=False)
    assert tri.shape == (len(ALPHAS), len(k), 3)
    direct = torch.linalg.solve(k.unsqueeze(0) + a.view(-1, 1, 1) * torch.eye(len(k), dtype=k.dtype), r)
    np.testing.assert_allclose(tri.numpy(), direct.numpy(), rtol=1e-7, atol=1e-9 * float(direct.abs().max()))
    np.testing.assert_allclose(eig.numpy(), direct.numpy(), rtol=1e-7, atol=1e-9 * float(direct.abs().max()))


def test_dual_form_run_picks_the_strength_ridgeclassifiercv_picks(tmp_path):
    """A run whose set is wider than its train rows goes through the dual form and picks sklearn's strength."""
    import datasets

    rng = np.random.default_rng(4)
    n, dim = 200, 256
    cls = rng.integers(0, CLASSES, n)
    x = (rng.standard_normal((n, dim)) + 0.25 * rng.standard_normal((CLASSES, dim))[cls]).astype(np.float32)
    ds = datasets.Dataset.from_dict({"image_path": [f"img_{i}.png" for i in range(n)], "cls": cls.tolist()})
    store = FeatureStore.create(tmp_path)
    with store.create_feature_set("wide/layer_1", n, (dim,), "float32", {"layer": "layer_1"}) as w:
        w.write(0, x)
    out = train_probes(FeatureStore.open(tmp_path), ds, "wide/*", "cls", heads="ridge", alphas=ALPHAS, seed=1)
    (res,) = out["results"]
    tr, va = (np.asarray(out["split"]["rows"][s]) for s in ("train", "validation"))
    assert dual_form(dim, len(tr))
    cv = RidgeClassifierCV(alphas=ALPHAS, cv=PredefinedSplit(np.r_[-np.ones(len(tr)), np.zeros(len(va))]))
    cv.fit(x[np.r_[tr, va]].astype(np.float64), cls[np.r_[tr, va]])
    assert res["best_alpha"] == pytest.approx(cv.alpha_)
    assert res["val_acc"] == pytest.approx(cv.best_score_)


def test_ridge_picks_the_strength_ridgeclassifiercv_picks(data):
    ds, store, x, cls = data
    out = train_probes(store, ds, "toy/*", "cls", heads="ridge", alphas=ALPHAS, seed=1)
    (res,) = out["results"]
    split = out["split"]
    tr, va, te = (np.asarray(split["rows"][s]) for s in ("train", "validation", "test"))
    assert split["targets"]["test"] == cls[te].tolist()
    sweep = [r["val_acc"] for r in out["sweep"]]
    assert len(sweep) == len(ALPHAS) and len(set(sweep)) > 3  # the strength matters on this data
    cv = RidgeClassifierCV(alphas=ALPHAS, cv=PredefinedSplit(np.r_[-np.ones(len(tr)), np.zeros(len(va))]))
    cv.fit(x[np.r_[tr, va]], cls[np.r_[tr, va]])
    assert res["best_alpha"] == pytest.approx(cv.alpha_)
    assert res["head"] == "ridge" and res["view"] == "vector" and res["best_lr"] is None
    # its test accuracy is that of sklearn's Ridge classifier at that strength, fit on train only
    from sklearn.linear_model import RidgeClassifier

    ref = RidgeClassifier(alpha=cv.alpha_).fit(x[tr], cls[tr]).score(x[te], cls[te])
    assert res["test_acc"] == pytest.approx(ref, abs=1.0 / len(te) + 1e-12)


def test_logistic_within_a_point_of_sklearn(data):
    ds, store, x, cls = data
    out = train_probes(store, ds, "toy/*", "cls", heads="logistic", cs=CS, seed=2)
    (res,) = out["results"]
    tr, va, te = (np.asarray(out["split"]["rows"][s]) for s in ("train", "validation", "test"))
    best, best_val = None, -1.0
    for c in CS:
        model = make_pipeline(StandardScaler(), LogisticRegression(C=c, max_iter=2000)).fit(x[tr], cls[tr])
        val = model.score(x[va], cls[va])
        if val > best_val:
            best, best_val = model, val
    assert best is not None
    ref = best.score(x[te], cls[te])
    assert abs(res["test_acc"] - ref) <= 0.01, (res["test_acc"], ref)
    assert res["test_acc"] > 0.5  # well above chance (0.25): the fit is real
    assert res["head"] == "logistic" and res["best_c"] in CS


def test_heads_together_share_one_split(data):
    ds, store, x, cls = data
    out = train_probes(store, ds, "toy/*", "cls", heads="linear,ridge,logistic", epochs=2, alphas=ALPHAS, cs=CS)
    assert [r["head"] for r in out["results"]] == ["linear", "ridge", "logistic"]
    assert {r["n_test"] for r in out["results"]} == {out["settings"]["rows"]["test"]}
    assert len(out["sweep"]) == 6 + len(ALPHAS) + len(CS)
