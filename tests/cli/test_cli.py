"""The command line: the demo (dataset, tiny encoders, extraction, probes) end to end, info, verify (exit codes), export and import."""

from __future__ import annotations

import json
import os

import pytest
import torch
from _util import make_store

from featstore.cli import main

torch.set_num_threads(1)


def test_demo_runs_end_to_end(tmp_path, capsys):
    out = tmp_path / "demo"
    args = ["demo", "--out", str(out), "--rows", "64", "--layers", "last", "--epochs", "2"]
    assert main(args) == 0
    text = capsys.readouterr().out
    assert "RANDOM-INIT" in text and "featstore demo --dinov2" in text
    assert {p.name for p in (out / "results").iterdir()} == {
        "probe_results.json",
        "probe_results.csv",
        "probe_accuracy.png",
        "split.json",
    }
    results = json.loads((out / "results" / "probe_results.json").read_text())["results"]
    keys = {(r["encoder"], r["pooling"], r["view"]) for r in results if r["head"] == "linear"}
    assert {("dinov2", "cls", "vector"), ("clip", "patch", "flat"), ("qwen", "patch", "mean")} <= keys
    assert len(keys) == 3 * 4 - 1  # cls, mean, patch flat and mean; Qwen has no CLS
    for line in ("dinov2", "clip", "qwen"):
        assert any(row.startswith(line) for row in text.splitlines())
    assert main(args) == 0  # reruns over its own output


def test_demo_refuses_a_foreign_folder(tmp_path, capsys):
    (tmp_path / "precious.txt").write_text("keep me")
    assert main(["demo", "--out", str(tmp_path)]) == 2
    assert "not a featstore demo folder" in capsys.readouterr().err
    assert (tmp_path / "precious.txt").exists()


def test_info_says_when_a_set_is_quantised(tmp_path, capsys):
    import json

    import torch

    from featstore import FeatureStore

    store = FeatureStore.create(tmp_path / "s")
    x = torch.randn((10, 3, 8)).half()
    with store.create_feature_set("enc/q", 10, (3, 8), "float16", {}, quant="float8_e4m3") as w:
        w.write(0, x)
    make_store(tmp_path / "r", key="enc/raw", n_rows=10, row_shape=(8,))
    assert main(["info", str(tmp_path / "s")]) == 0
    out = capsys.readouterr().out
    assert "quantised: float8_e4m3 codes + float32 scales of float16 rows, 0.00 MB stored" in out
    assert main(["info", str(tmp_path / "s"), "--json"]) == 0
    (row,) = json.loads(capsys.readouterr().out)
    assert row["dtype"] == "float8_e4m3" and row["stored_bytes"] == 10 * 24 + 10 * 3 * 4  # codes + scales
    assert row["quant"] == {"scheme": "float8_e4m3", "dtype": "float16", "logical_bytes": 10 * 24 * 2}
    assert main(["info", str(tmp_path / "r"), "--json"]) == 0
    (raw,) = json.loads(capsys.readouterr().out)
    assert raw["quant"] is None and raw["stored_bytes"] == 10 * 8 * 2


@pytest.mark.damages_store
def test_info_verify_export_import(tmp_path, capsys):
    make_store(tmp_path / "s", key="enc/l1", n_rows=20, row_shape=(4,))
    assert main(["info", str(tmp_path / "s")]) == 0
    assert "enc/l1" in capsys.readouterr().out
    assert main(["verify", str(tmp_path / "s")]) == 0
    assert main(["export-pt", str(tmp_path / "s"), "enc/l1", "--out", str(tmp_path / "x.pt")]) == 0
    assert main(["import-pt", str(tmp_path / "s"), "enc/l1_copy", str(tmp_path / "x.pt")]) == 0
    path = tmp_path / "s" / "enc" / "l1.safetensors"
    os.chmod(path, 0o644)
    with open(path, "r+b") as f:
        f.seek(4100)
        f.write(b"\x7f")
    capsys.readouterr()
    assert main(["verify", str(tmp_path / "s")]) == 1
    assert "enc/l1" in capsys.readouterr().err
    assert main(["verify", str(tmp_path / "nowhere")]) == 1
