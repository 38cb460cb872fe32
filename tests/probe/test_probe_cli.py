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
    assert {p.name for p in out.iterdir()} == {
        "probe_results.json",
        "probe_results.csv",
        "probe_accuracy.png",
        "split.json",
    }
    res = json.loads((out / "probe_results.json").read_text())
    assert [(r["key"], r["head"], r["view"]) for r in res["results"]] == [
        ("toy/layer_1/cls", "linear", "vector"),
        ("toy/layer_1/patch", "linear", "flat"),
        ("toy/layer_1/patch", "linear", "mean"),
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
    assert {p.name for p in out.iterdir()} == {"probe_results.json", "probe_results.csv", "split.json"}
    assert "matplotlib is not installed" in capsys.readouterr().out


def test_cli_errors(paths, tmp_path, capsys):
    data, root = paths
    assert (
        main(["probe", "--store", str(root), "--dataset", str(data), "--keys", "clip/*", "--out", str(tmp_path)]) == 2
    )
    assert "no feature set" in capsys.readouterr().err


def test_split_file_is_written_and_reused(paths, tmp_path, capsys):
    data, root = paths
    first, second = tmp_path / "a", tmp_path / "b"
    base = ["probe", "--store", str(root), "--dataset", str(data), "--keys", "toy/layer_1/cls", "--head", "ridge"]
    assert main(base + ["--out", str(first), "--seed", "0"]) == 0
    split = json.loads((first / "split.json").read_text())
    rows = {s: set(split["rows"][s]) for s in ("train", "validation", "test")}
    assert split["task"] == "relation" and all(rows.values())
    assert not rows["train"] & rows["test"] and not rows["train"] & rows["validation"]
    assert all(len(split["targets"][s]) == len(split["rows"][s]) for s in rows)
    assert set(split["targets"]["train"]) == {0, 1, 2, 3}
    # another seed alone makes another split; with --split-file the rows (and so the numbers) are the first run's
    assert main(base + ["--out", str(second), "--seed", "5", "--split-file", str(first / "split.json")]) == 0
    again = json.loads((second / "split.json").read_text())
    assert again["rows"] == split["rows"] and again["targets"] == split["targets"]
    a, b = (json.loads((p / "probe_results.json").read_text())["results"] for p in (first, second))
    assert [r["test_acc"] for r in a] == [r["test_acc"] for r in b]
    # a split whose targets do not match this dataset is refused, before any training
    split["targets"]["test"][0] = (split["targets"]["test"][0] + 1) % 4
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps(split))
    capsys.readouterr()
    assert main(base + ["--out", str(tmp_path / "c"), "--split-file", str(bad)]) == 2
    assert "targets differ" in capsys.readouterr().err
    assert not (tmp_path / "c").exists()


@pytest.mark.parametrize(
    "bad, says",
    [
        (["--batch-size", "-4"], "--batch-size: expected a positive integer"),
        (["--batch-size", "0"], "--batch-size: expected a positive integer"),
        (["--epochs", "0"], "--epochs: expected a positive integer"),
        (["--lrs", "0.01,-1"], "--lrs: expected comma-separated positive numbers"),
        (["--wds", "-0.1"], "--wds: expected comma-separated non-negative numbers"),
        (["--alphas", "0"], "--alphas: expected comma-separated positive numbers"),
        (["--cs", "abc"], "--cs: expected comma-separated numbers"),
        (["--head", "linear,svm"], "unknown or no head(s) ['svm']"),
    ],
)
def test_cli_refuses_bad_options_before_any_work(paths, tmp_path, capsys, bad, says):
    data, root = paths
    with pytest.raises(SystemExit) as exc:
        main(["probe", "--store", str(root), "--dataset", str(data), "--out", str(tmp_path / "o")] + bad)
    assert exc.value.code == 2
    assert says in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize(
    "option, says",
    [
        ({"batch_size": -4}, "batch_size must be a positive integer"),
        ({"epochs": 0}, "epochs must be a positive integer"),
        ({"lrs": ()}, "lrs (learning rates) must not be empty"),
        ({"lrs": (float("nan"),)}, "positive finite numbers"),
        ({"alphas": (-1.0,)}, "alphas (ridge strengths) must be positive"),
        ({"cs": (0.0,)}, "cs (logistic C values) must be positive"),
        ({"heads": "attention"}, "unknown or no head(s) ['attention']"),
        ({"heads": []}, "unknown or no head(s) []"),
        ({"fractions": (0.5, 0.5)}, "fractions must be three positive numbers"),
    ],
)
def test_api_checks_every_option_first(option, says):
    # the store and dataset do not exist: the option is refused before either is opened
    with pytest.raises(ValueError) as exc:
        featstore.train_probes("no-such-store", "no-such-dataset", **option)
    assert says in str(exc.value)
