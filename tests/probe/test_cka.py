"""featstore compare / linear CKA: the streaming sums equal CKA computed from the arrays in memory."""

import csv
import json

import numpy as np
import pytest
import torch

from featstore import FeatureStore
from featstore.cli import main
from featstore.probe.cka import linear_cka

torch.set_num_threads(1)

N = 500


def cka_in_memory(x, y):
    """The textbook formula (Kornblith et al. 2019) on whole arrays."""
    x, y = x - x.mean(0), y - y.mean(0)
    return np.linalg.norm(x.T @ y) ** 2 / (np.linalg.norm(x.T @ x) * np.linalg.norm(y.T @ y))


@pytest.fixture(scope="module")
def sets(tmp_path_factory):
    rng = np.random.default_rng(0)
    a = rng.standard_normal((N, 12))
    q, _ = np.linalg.qr(rng.standard_normal((12, 12)))
    arrays = {
        "enc/a": a,
        "enc/rotated": 3.0 * a @ q + 5.0,  # a rotation, a scale and a shift of a: CKA 1
        "enc/mixed": np.c_[a[:, :6], rng.standard_normal((N, 10))],  # half of a, half noise
        "enc/noise": rng.standard_normal((N, 8)),
        "enc/grid": rng.standard_normal((N, 4, 12)) + a[:, None, :],  # tokens around a: its mean is close to a
    }
    root = tmp_path_factory.mktemp("store")
    store = FeatureStore.create(root)
    for key, x in arrays.items():
        with store.create_feature_set(key, N, x.shape[1:], "float32") as w:
            w.write(0, x.astype(np.float32))
    return FeatureStore.open(root), {k: v.astype(np.float32).astype(np.float64) for k, v in arrays.items()}


def test_streaming_cka_equals_the_in_memory_formula(sets):
    store, arrays = sets
    out = linear_cka(store, "enc/*", batch_size=64)  # many batches: the sums are streamed
    keys, m = out["keys"], np.asarray(out["matrix"])
    assert sorted(keys) == sorted(arrays) and out["n_rows"] == N
    vec = {k: (v.mean(1) if v.ndim == 3 else v) for k, v in arrays.items()}
    for i, a in enumerate(keys):
        for j, b in enumerate(keys):
            assert m[i, j] == pytest.approx(cka_in_memory(vec[a], vec[b]), rel=1e-9, abs=1e-12), (a, b)
    at = {k: i for i, k in enumerate(keys)}
    assert m[at["enc/a"], at["enc/rotated"]] == pytest.approx(1.0, abs=1e-9)
    assert m[at["enc/a"], at["enc/noise"]] < 0.15 < m[at["enc/a"], at["enc/mixed"]] < 0.95
    assert np.allclose(m, m.T) and np.allclose(np.diag(m), 1.0)
    assert "mean-pooled" in out["grids"]


def test_compare_command_writes_csv_json_png(sets, tmp_path, capsys):
    store, _ = sets
    out = tmp_path / "cka"
    assert main(["compare", str(store.root), "--keys", "enc/a", "--keys", "enc/r*", "--out", str(out)]) == 0
    assert {p.name for p in out.iterdir()} == {"cka.json", "cka.csv", "cka.png"}
    saved = json.loads((out / "cka.json").read_text())
    assert saved["keys"] == ["enc/a", "enc/rotated"] and saved["matrix"][0][1] == pytest.approx(1.0, abs=1e-9)
    with open(out / "cka.csv") as f:
        rows = list(csv.reader(f))
    assert rows[0] == ["key", "enc/a", "enc/rotated"] and float(rows[1][2]) == pytest.approx(1.0, abs=1e-9)
    assert (out / "cka.png").read_bytes()[:4] == b"\x89PNG" and "linear CKA over 500 rows" in capsys.readouterr().out


def test_compare_refuses_bad_input(sets, tmp_path, capsys):
    store, _ = sets
    with pytest.raises(ValueError, match="at least two"):
        linear_cka(store, "enc/a")
    with pytest.raises(ValueError, match="batch_size must be a positive integer"):
        linear_cka(store, "*", batch_size=0)
    with pytest.raises(SystemExit) as exc:
        main(["compare", str(store.root), "--batch-size", "-4"])
    assert exc.value.code == 2 and "expected a positive integer" in capsys.readouterr().err
    assert main(["compare", str(store.root), "--keys", "nothing*", "--out", str(tmp_path / "o")]) == 2
    assert "at least two" in capsys.readouterr().err and not (tmp_path / "o").exists()
