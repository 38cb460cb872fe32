"""The .pt export format: export beside the safetensors file, import through weights_only loading only."""

from __future__ import annotations

import pickle

import pytest
import torch
from _util import make_store

from featstore import CorruptFileError, FeatureStore, FormatError

torch.set_num_threads(1)


def test_export_follows_the_seed_layout(tmp_path):
    store, data, labels = make_store(tmp_path, key="dinov2/layer_10", n_rows=30, row_shape=(12,))
    path = store["dinov2/layer_10"].export_pt()
    assert path == tmp_path / "dinov2" / "layer_10.pt"
    obj = torch.load(path, weights_only=True)
    assert set(obj) == {"features", "labels", "metadata"}
    assert torch.equal(obj["features"], data) and torch.equal(obj["labels"], torch.from_numpy(labels))
    assert obj["metadata"]["featstore_key"] == "dinov2/layer_10" and obj["metadata"]["seed"] == 0
    assert path.stat().st_size < data.numel() * 2 + 4096, "only the features' bytes are saved, not the whole file"


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_import_round_trip(tmp_path, dtype):
    features = torch.randn(40, 3, 4).to(dtype)
    torch.save(
        {"features": features, "labels": torch.arange(40), "metadata": {"model": "x", "n": 3}}, tmp_path / "in.pt"
    )
    store = FeatureStore.create(tmp_path / "store")
    fs = store.import_pt(tmp_path / "in.pt", "clip/last_layer")
    assert torch.equal(fs[:], features) and torch.equal(fs.labels, torch.arange(40))
    assert fs.metadata["model"] == "x" and fs.metadata["imported_from"] == "in.pt"
    assert FeatureStore.open(tmp_path / "store").verify()["feature_sets"] == 1
    half = store.import_pt(tmp_path / "in.pt", "clip/half", dtype="float16")
    assert half.dtype == torch.float16


class _Evil:
    def __init__(self, canary):
        self.canary = canary

    def __reduce__(self):
        return (open, (self.canary, "w"))


def test_pickled_code_never_runs(tmp_path):
    canary = tmp_path / "canary"
    with open(tmp_path / "evil.pt", "wb") as f:
        pickle.dump({"features": _Evil(str(canary))}, f)
    torch.save({"features": torch.zeros(2, 2), "metadata": _Evil(str(canary))}, tmp_path / "evil2.pt")
    store = FeatureStore.create(tmp_path / "store")
    for name in ("evil.pt", "evil2.pt"):
        with pytest.raises(CorruptFileError, match=name):
            store.import_pt(tmp_path / name, "x/y")
    assert not canary.exists()


@pytest.mark.parametrize(
    "payload, message",
    [
        ([1, 2], "expected a dict"),
        ({"labels": torch.zeros(3)}, "'features' must be a tensor"),
        ({"features": torch.zeros(3, 2), "labels": torch.zeros(4, dtype=torch.long)}, r"shape \(3,\)"),
        ({"features": torch.zeros(3, 2), "labels": torch.zeros(3)}, "integers"),
        ({"features": torch.zeros(3, 2), "metadata": [1]}, "'metadata' must be a dict"),
        ({"features": torch.zeros(3, 2, dtype=torch.complex64)}, "unsupported dtype"),
    ],
)
def test_bad_pt_files_are_named(tmp_path, payload, message):
    torch.save(payload, tmp_path / "bad.pt")
    with pytest.raises(FormatError, match=message) as info:
        FeatureStore.create(tmp_path / "s").import_pt(tmp_path / "bad.pt", "x/y")
    assert "bad.pt" in str(info.value)


def test_garbage_pt(tmp_path):
    (tmp_path / "junk.pt").write_bytes(b"PK\x03\x04 not really a zip")
    with pytest.raises(CorruptFileError, match="junk.pt"):
        FeatureStore.create(tmp_path / "s").import_pt(tmp_path / "junk.pt", "x/y")
