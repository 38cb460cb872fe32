"""featstore probe: the command writes every promised file; without matplotlib all but the plot."""

import builtins
import csv
import json

import pytest
import torch
from _util import write_probe_store as write_store

import featstore
from featstore.cli import main
from featstore.spatial.synth import generate

torch.set_num_threads(1)

ARGS = ["--task", "relation", "--lrs", "0.003,0.01", "--wds", "0", "--epochs", "3", "--batch-size", "64"]


@pytest.fixture(scope="module")
def paths(tmp_path_factory):
    data = tmp_path_factory.mktemp("ds") / "spatial"
    ds = generate(data, n=200, size=32, workers=1, progress=False)
    root = tmp_path_factory.mktemp("store")
    write_store(root, ds)
    return data, root


def test_cli_writes_every_file(paths, tmp_path, capsys):
    data, root = paths
    out = tmp_path / "results"
    assert (
        main(
            ["probe", "--store", str(root), "--dataset", str(data), "--keys", "toy/layer_1/*", "--out", str(out)] + ARGS
        )
        == 0
    )
    printed = capsys.readouterr().out
    assert {p.name for p in out.iterdir()} == {"probe_results.json", "probe_results.csv", "probe_accuracy.png"}
    res = json.loads((out / "probe_results.json").read_text())
    assert [(r["key"], r["head"]) for r in res["results"]] == [
        ("toy/layer_1/cls", "linear"),
        ("toy/layer_1/patch", "flat"),
        ("toy/layer_1/patch", "mean"),
    ]
    with open(out / "probe_results.csv") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 3 and {"acc_left", "ci_low", "ci_high", "best_lr"} <= set(rows[0])
    assert (out / "probe_accuracy.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "test" in printed and "toy" in printed and "probe_accuracy.png" in printed
    # the Python API gives the same numbers as the command
    api = featstore.train_probes(
        str(root),
        str(data),
        ["toy/layer_1/*"],
        "relation",
        lrs=(0.003, 0.01),
        wds=(0.0,),
        epochs=3,
        batch_size=64,
        device="cpu",
    )
    assert api["results"] == res["results"]


def test_cli_without_matplotlib(paths, tmp_path, capsys, monkeypatch):
    data, root = paths
    real = builtins.__import__

    def no_matplotlib(name, *a, **k):
        if name == "matplotlib" or name.startswith("matplotlib."):
            raise ImportError("No module named 'matplotlib'")
        return real(name, *a, **k)

    monkeypatch.setattr(builtins, "__import__", no_matplotlib)
    out = tmp_path / "results"
    assert (
        main(
            ["probe", "--store", str(root), "--dataset", str(data), "--keys", "toy/layer_0/*", "--out", str(out)] + ARGS
        )
        == 0
    )
    assert {p.name for p in out.iterdir()} == {"probe_results.json", "probe_results.csv"}
    assert "matplotlib is not installed" in capsys.readouterr().out


def test_cli_errors(paths, tmp_path, capsys):
    data, root = paths
    assert (
        main(["probe", "--store", str(root), "--dataset", str(data), "--keys", "clip/*", "--out", str(tmp_path)]) == 2
    )
    assert "no feature set" in capsys.readouterr().err
