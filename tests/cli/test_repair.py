"""A store repairable from the shell: `featstore delete` removes sets (broken ones too, manifest
first), and the commands that do not need a broken set work on the rest, saying which they skipped."""

from __future__ import annotations

import json

import pytest
import torch
from _util import make_store, write_probe_store

from featstore import FeatureStore
from featstore.cli import main
from featstore.spatial.synth import generate

torch.set_num_threads(1)


@pytest.mark.damages_store
def test_delete_a_broken_set(tmp_path, capsys):
    root = tmp_path / "s"
    make_store(root, key="enc/a", n_rows=4, row_shape=(2,))
    store = FeatureStore.open(root)
    with store.create_feature_set("enc/b", n_rows=4, row_shape=(2,), dtype="float32") as w:
        w.write(0, torch.ones(4, 2))
    store["enc/b"].export_pt()
    (root / "enc" / "a.safetensors").unlink()
    assert main(["verify", str(root)]) == 1
    assert "featstore delete STORE KEY" in capsys.readouterr().err

    assert main(["delete", str(root), "enc/a", "enc/nope"]) == 1  # an unknown key: nothing removed
    assert "enc/a" in json.loads((root / "featstore.json").read_text())["feature_sets"]
    capsys.readouterr()

    assert main(["delete", str(root), "enc/a"]) == 0
    assert capsys.readouterr().out.strip() == f"deleted enc/a (enc/a.safetensors) from {root}"
    assert main(["verify", str(root)]) == 0
    assert main(["delete", str(root), "enc/b"]) == 0
    assert not (root / "enc" / "b.safetensors").exists() and not (root / "enc" / "b.pt").exists()
    assert json.loads((root / "featstore.json").read_text())["feature_sets"] == {}


def test_delete_removes_the_manifest_entry_first(tmp_path, monkeypatch):
    """Killed between the manifest and the files, the store is consistent: the set is gone from it."""
    import featstore.store.store as store_module

    root = tmp_path / "s"
    make_store(root, key="enc/a", n_rows=4, row_shape=(2,))
    real_remove = store_module.Manifest.remove
    seen = []

    def remove(self, key):
        real_remove(self, key)
        seen.append((root / "enc" / "a.safetensors").exists())

    monkeypatch.setattr(store_module.Manifest, "remove", remove)
    assert main(["delete", str(root), "enc/a"]) == 0
    assert seen == [True]  # the file was still there when the entry was gone


@pytest.mark.damages_store
def test_probe_and_export_skip_broken_sets(tmp_path, capsys):
    data = tmp_path / "spatial"
    ds = generate(data, n=120, size=32, workers=1, progress=False)
    root = tmp_path / "store"
    write_probe_store(root, ds)
    (root / "toy" / "layer_0" / "cls.safetensors").unlink()
    argv = ["probe", str(root), "--dataset", str(data), "--keys", "toy/*/cls", "--epochs", "1", "--lrs", "0.01"]
    assert main([*argv, "--wds", "0", "--out", str(tmp_path / "r")]) == 0
    out = capsys.readouterr().out
    assert "skipped 1 broken feature set(s): toy/layer_0/cls" in out
    results = json.loads((tmp_path / "r" / "probe_results.json").read_text())["results"]
    assert {r["key"] for r in results} == {"toy/layer_1/cls"}

    assert main(["export-pt", str(root), "toy/layer_1/cls", "--out", str(tmp_path / "x.pt")]) == 0
    assert main(["export-pt", str(root), "toy/layer_0/cls"]) == 1
    assert "cls.safetensors is missing" in capsys.readouterr().err
