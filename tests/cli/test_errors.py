"""Every mistake ends in one clear line: the CLI over a corpus of bad invocations (every command), each
exiting with its documented status, printing no traceback and naming what is wrong."""

from __future__ import annotations

import os
import pickle
from pathlib import Path

import pytest
import torch
from _encoder_models import make_dataset
from _util import make_store

from featstore.cli import main

torch.set_num_threads(1)
pytestmark = pytest.mark.usefixtures("hub_offline")
NO_CUDA = torch.version.cuda is None


class Evil:
    def __reduce__(self):
        return (os.system, ("echo featstore-test-pwned",))


@pytest.fixture(scope="module")
def w(tmp_path_factory, tiny_dinov2_dir):
    """The files the corpus needs: a store, a broken store, a regular file, datasets, models."""
    root = tmp_path_factory.mktemp("corpus")
    make_store(root / "store", key="enc/l1", n_rows=8, row_shape=(4,))
    make_store(root / "broken", key="enc/gone", n_rows=8, row_shape=(4,))
    make_store(root / "broken2", key="enc/gone", n_rows=8, row_shape=(4,))
    make_store(root / "broken3", key="enc/last", n_rows=8, row_shape=(4,))
    for name in ("broken", "broken2"):
        (root / name / "enc" / "gone.safetensors").unlink()
    (root / "broken3" / "enc" / "last.safetensors").unlink()
    (root / "empty").mkdir()
    (root / "nostore").mkdir()
    (root / "afile").write_text("not a store")
    (root / "garbage.pt").write_bytes(b"not a pickle at all")
    data = make_dataset(root / "data", n_images=4, repeats=())
    bad = make_dataset(root / "bad", n_images=4, repeats=())
    png = root / "bad" / "images" / "0001.png"
    png.write_bytes(png.read_bytes()[:200])
    evil = root / "evil"
    evil.mkdir()
    for f in Path(tiny_dinov2_dir).iterdir():
        if f.suffix != ".safetensors":
            (evil / f.name).write_bytes(f.read_bytes())
    torch.save({"weight": Evil()}, evil / "pytorch_model.bin")
    from featstore import FeatureStore

    FeatureStore.create(root / "emptystore")
    return {
        "root": str(root),
        "store": str(root / "store"),
        "broken": str(root / "broken"),
        "broken2": str(root / "broken2"),
        "broken3": str(root / "broken3"),
        "empty": str(root / "empty"),
        "emptystore": str(root / "emptystore"),
        "nostore": str(root / "nostore"),
        "afile": str(root / "afile"),
        "garbage": str(root / "garbage.pt"),
        "data": str(data),
        "bad": str(bad),
        "model": str(tiny_dinov2_dir),
        "evil": str(evil),
    }


X = ["--encoder", "dinov2", "--no-progress", "--num-workers", "0"]

# (id, argv with {placeholders}, exit status, what stderr names, what it must not say)
CORPUS = [
    ("no-command", [], 2, "required", None),
    ("unknown-command", ["bogus"], 2, "invalid choice", None),
    ("demo-bad-int", ["demo", "--rows", "many"], 2, "invalid int value", None),
    ("demo-foreign-folder", ["demo", "--out", "{nostore}/..", "--rows", "8"], 2, "not a featstore demo folder", None),
    ("demo-unknown-encoder", ["demo", "--out", "{root}/d", "--encoders", "vit"], 2, "unknown or no encoder", None),
    ("info-missing", ["info", "{root}/nowhere"], 1, "nowhere does not exist", "FeatureStore.create("),
    ("info-file", ["info", "{afile}"], 1, "afile is a file, not a store", "FeatureStore.create("),
    ("info-not-a-store", ["info", "{nostore}"], 1, "featstore.json does not exist", None),
    ("info-bad-option", ["info", "{store}", "--bogus"], 2, "unrecognized arguments", None),
    ("info-broken", ["info", "{broken}"], 1, "featstore delete", None),
    ("verify-missing", ["verify", "{root}/nowhere"], 1, "does not exist", "FeatureStore.create("),
    ("verify-file", ["verify", "{afile}"], 1, "is a file", None),
    ("verify-unknown-key", ["verify", "{store}", "enc/nope"], 1, "no feature set 'enc/nope'", None),
    ("verify-broken", ["verify", "{broken}"], 1, "gone.safetensors", None),
    ("delete-no-keys", ["delete", "{store}"], 2, "the following arguments are required: KEY", None),
    ("delete-unknown-key", ["delete", "{store}", "enc/l1", "enc/nope"], 1, "no feature set 'enc/nope'", None),
    ("export-unknown-key", ["export-pt", "{store}", "enc/nope"], 1, "no feature set 'enc/nope'", None),
    ("export-broken-key", ["export-pt", "{broken}", "enc/gone"], 1, "gone.safetensors", None),
    (
        "import-missing-file",
        ["import-pt", "{root}/new", "k/v", "{root}/missing.pt"],
        2,
        "missing.pt does not exist",
        None,
    ),
    ("import-old-order", ["import-pt", "{garbage}", "{root}/new", "k/v"], 2, "the store comes first", None),
    (
        "import-not-a-pt",
        ["import-pt", "{root}/new2", "k/v", "{garbage}"],
        1,
        "not a weights-only .pt file featstore can read (it is not a zip archive",
        None,
    ),
    ("import-bad-key", ["import-pt", "{store}", "../up", "{garbage}"], 2, "key", None),
    ("synth-bad-int", ["dataset", "synth", "--n", "x"], 2, "invalid int value", None),
    ("dataset-no-command", ["dataset"], 2, "required", None),
    ("import-unknown-importer", ["dataset", "import", "nope", "x", "--out", "{root}/o"], 2, "no importer 'nope'", None),
    (
        "import-whatsup-missing",
        ["dataset", "import", "whatsup", "{root}/nowhere", "--subset", "A", "--out", "{root}/o"],
        1,
        "is not a folder",
        None,
    ),
    (
        "import-whatsup-subset",
        ["dataset", "import", "whatsup", "{root}", "--subset", "Z", "--out", "o"],
        2,
        "invalid choice",
        None,
    ),
    ("validate-missing", ["dataset", "validate", "{root}/nowhere"], 1, "nowhere", None),
    ("validate-truncated", ["dataset", "validate", "{bad}", "--no-progress"], 1, "0001.png cannot be decoded", None),
    ("split-missing", ["dataset", "split", "{root}/nowhere", "--out", "{root}/s"], 1, "nowhere", None),
    ("split-no-out", ["dataset", "split", "{data}"], 2, "--out", None),
    ("extract-no-dataset", ["extract", "{root}/f", "--model", "{model}", *X], 2, "--dataset", None),
    (
        "extract-missing-dataset",
        ["extract", "{root}/f", "--dataset", "{root}/nowhere", "--model", "{model}", *X],
        1,
        "nowhere",
        None,
    ),
    (
        "extract-store-is-file",
        ["extract", "{afile}", "--dataset", "{data}", "--model", "{model}", *X],
        1,
        "is a file, not a folder",
        "Errno",
    ),
    (
        "extract-store-twice",
        ["extract", "{root}/f", "--out", "{root}/g", "--dataset", "{data}", "--model", "{model}", *X],
        2,
        "given twice",
        None,
    ),
    (
        "extract-missing-model",
        ["extract", "{root}/f", "--dataset", "{data}", "--model", "./nope-model", *X],
        1,
        "model folder ./nope-model does not exist",
        "Repo id",
    ),
    (
        "extract-unknown-encoder",
        ["extract", "{root}/f", "--dataset", "{data}", "--model", "{model}", "--encoder", "vitx"],
        1,
        "vitx",
        None,
    ),
    (
        "extract-unknown-layer",
        ["extract", "{root}/f", "--dataset", "{data}", "--model", "{model}", "--layers", "99", *X],
        1,
        "no layer '99'",
        None,
    ),
    (
        "extract-bad-pooling",
        ["extract", "{root}/f", "--dataset", "{data}", "--model", "{model}", "--pooling", "max", *X],
        1,
        "poolings",
        None,
    ),
    (
        "extract-bad-device",
        ["extract", "{root}/f", "--dataset", "{data}", "--model", "{model}", "--device", "gpu", *X],
        2,
        "unknown device 'gpu'",
        None,
    ),
    (
        "extract-malicious-pickle",
        ["extract", "{root}/f", "--dataset", "{data}", "--model", "{evil}", *X],
        1,
        "pytorch_model.bin: refused: the checkpoint is not a plain tensor file",
        "weights_only",
    ),
    (
        "extract-truncated-image",
        [
            "extract",
            "{root}/t",
            "--dataset",
            "{bad}",
            "--model",
            "{model}",
            "--encoder",
            "dinov2",
            "--no-progress",
            "--batch-size",
            "1",
        ],
        1,
        "row 1: cannot read image",
        "DataLoader",
    ),
    (
        "extract-into-broken-set",
        ["extract", "{broken2}", "--dataset", "{data}", "--model", "{model}", "--name", "enc", "--layers", "last", *X],
        0,
        "featstore extract: skipped 1 broken feature set(s): enc/gone",
        None,
    ),
    (
        "extract-its-own-broken-set",
        ["extract", "{broken3}", "--dataset", "{data}", "--model", "{model}", "--name", "enc", "--layers", "last", *X],
        1,
        "to write it anew, or remove it with `featstore delete",
        None,
    ),
    (
        "extract-overwrite-its-own-broken-set",
        ["extract", "{broken3}", "--dataset", "{data}", "--model", "{model}", "--name", "enc", "--layers", "last"]
        + [*X, "--overwrite"],
        0,
        None,
        "skipped",
    ),
    (
        "extract-batch-size-0",
        ["extract", "{root}/f", "--dataset", "{data}", "--model", "{model}", *X, "--batch-size", "0"],
        2,
        "batch_size (--batch-size) must be an integer >= 1, got 0",
        None,
    ),
    (
        "extract-bad-store-dtype",
        ["extract", "{root}/f", "--dataset", "{data}", "--model", "{model}", *X, "--store-dtype", "float8"],
        2,
        "unsupported dtype 'float8'",
        None,
    ),
    (
        "synth-negative-rows",
        ["dataset", "synth", "--out", "{root}/syn", "--n", "-5", "--no-progress"],
        2,
        "featstore dataset synth: error: n must be an integer >= 1",
        None,
    ),
    (
        "split-bad-fractions",
        ["dataset", "split", "{data}", "--out", "{root}/sp", "--fractions", "1", "1", "1"],
        2,
        "summing to 1",
        None,
    ),
    (
        "import-table-missing",
        ["dataset", "import", "table", "{root}/nope.csv", "--out", "{root}/t"],
        1,
        "nope.csv does not exist",
        None,
    ),
    ("encoders-bad-option", ["encoders", "--bogus"], 2, "unrecognized arguments", None),
    ("probe-no-store", ["probe", "--dataset", "{data}"], 2, "give the store once", None),
    ("probe-missing-store", ["probe", "{root}/nowhere", "--dataset", "{data}"], 1, "does not exist", None),
    ("probe-empty-store", ["probe", "{emptystore}", "--dataset", "{data}"], 2, "holds no feature sets", None),
    (
        "probe-no-match",
        ["probe", "{store}", "--dataset", "{data}", "--keys", "zzz*"],
        2,
        "matches ['zzz*']; it has 1: enc/l1",
        None,
    ),
    ("probe-bad-lrs", ["probe", "{store}", "--dataset", "{data}", "--lrs", "fast"], 2, "comma-separated numbers", None),
    ("compare-no-store", ["compare"], 2, "the following arguments are required: STORE", None),
    ("compare-missing-store", ["compare", "{root}/nowhere"], 1, "does not exist", None),
    (
        "compare-one-set",
        ["compare", "{store}", "--out", "{root}/cka"],
        2,
        "CKA compares at least two feature sets",
        None,
    ),
    ("compare-bad-batch", ["compare", "{store}", "--batch-size", "0"], 2, "positive", None),
    ("convert-no-dtype", ["convert", "{store}", "{root}/c1"], 2, "the following arguments are required: --dtype", None),
    ("convert-into-itself", ["convert", "{store}", "{store}", "--dtype", "int8"], 2, "apart from the source", None),
    ("convert-bad-dtype", ["convert", "{store}", "{root}/c2", "--dtype", "int4"], 2, "unsupported dtype 'int4'", None),
    (
        "convert-unknown-key",
        ["convert", "{store}", "{root}/c3", "--dtype", "int8", "--keys", "enc/nope"],
        1,
        "enc/nope",
        None,
    ),
    ("convert-missing-store", ["convert", "{root}/nowhere", "{root}/c4", "--dtype", "int8"], 1, "does not exist", None),
]
if NO_CUDA:
    CORPUS += [
        (
            "extract-cuda",
            ["extract", "{root}/c", "--dataset", "{data}", "--model", "{model}", "--device", "cuda", *X],
            1,
            "built without CUDA",
            "AssertionError",
        ),
        ("probe-cuda", ["probe", "{store}", "--dataset", "{data}", "--device", "cuda"], 1, "built without CUDA", None),
        ("demo-cuda", ["demo", "--out", "{root}/demo-cuda", "--device", "cuda"], 1, "built without CUDA", None),
    ]


@pytest.mark.parametrize(("argv", "status", "names", "never"), [c[1:] for c in CORPUS], ids=[c[0] for c in CORPUS])
def test_bad_invocation(w, capsys, argv, status, names, never):
    argv = [a.format(**w) for a in argv]
    try:
        rc = main(argv)
    except SystemExit as exc:  # argparse
        rc = exc.code
    err = capsys.readouterr().err
    assert rc == status, err
    assert "Traceback" not in err and "[Errno" not in err
    if names is not None:
        assert names in err
    if never is not None:
        assert never not in err
    if status and "usage:" not in err:  # featstore's own messages: one line (verify lists the damage below it)
        lines = [line for line in err.splitlines() if line.startswith("featstore")]
        assert lines and lines[-1].startswith(f"featstore {argv[0]}"), err
        if argv[0] != "verify" and argv[:2] != ["dataset", "validate"]:
            assert len(err.strip().splitlines()) == 1, err


def test_corpus_covers_every_command():
    from featstore.cli import build_parser

    commands = set(build_parser()._subparsers._group_actions[0].choices)
    assert commands <= {c[1][0] for c in CORPUS if c[1]}


def test_no_store_left_behind(w):
    """A failure before any work leaves no empty store: missing .pt file, CUDA on a CPU-only torch."""
    assert not os.path.exists(os.path.join(w["root"], "new"))
    if NO_CUDA:
        assert not os.path.exists(os.path.join(w["root"], "c"))
        assert not os.path.exists(os.path.join(w["root"], "demo-cuda"))


def test_malicious_pickle_never_ran(w, capfd):
    assert main(["extract", f"{w['root']}/f2", "--dataset", w["data"], "--model", w["evil"], *X]) == 1
    assert "featstore-test-pwned" not in capfd.readouterr().out
    with pytest.raises(pickle.UnpicklingError):
        torch.load(os.path.join(w["evil"], "pytorch_model.bin"), weights_only=True)


def test_ctrl_c_during_extract_says_what_is_committed(w, tmp_path, capsys, monkeypatch):
    import featstore.extraction.run as run

    real = run.encode_batches

    def interrupted(job, todo, writer_for, after_batch):
        def after(done, images):
            after_batch(done, images)
            if done == 2:
                raise KeyboardInterrupt

        real(job, todo, writer_for, after)

    monkeypatch.setattr(run, "encode_batches", interrupted)
    argv = ["extract", str(tmp_path / "f"), "--dataset", w["data"], "--model", w["model"], *X]
    argv += ["--batch-size", "1", "--commit-every", "1"]
    assert main(argv) == 130
    err = capsys.readouterr().err
    assert err.strip() == (
        f"featstore extract: interrupted: 2 of 4 rows are committed in the 1 feature set(s) being written to "
        f"{tmp_path / 'f'}; run the same command again to resume from there"
    )
    monkeypatch.setattr(run, "encode_batches", real)
    assert main(argv) == 0
    assert "1 of 4 distinct images" not in capsys.readouterr().out  # resumed: the 2 committed rows' images skipped
    from featstore import FeatureStore

    assert FeatureStore.open(tmp_path / "f").info("dinov2/last").complete


def test_interrupt_of_another_command_is_one_line(w, capsys, monkeypatch):
    import featstore.cli.store as store_cli

    def boom(root):
        raise KeyboardInterrupt

    monkeypatch.setattr(store_cli, "open_store", boom)
    assert main(["info", w["store"]]) == 130
    assert capsys.readouterr().err == "featstore info: interrupted\n"


def _featstore(*args, **kwargs):
    import subprocess
    import sys

    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    return subprocess.Popen([sys.executable, "-m", "featstore", *args], env=env, **kwargs)


def test_sigint_real_process(w, tmp_path):
    """A real SIGINT to the whole process group (as a terminal's Ctrl-C), DataLoader workers included."""
    import json
    import signal
    import subprocess
    import time

    data = make_dataset(tmp_path / "d", n_images=60, repeats=(), size=(32, 32))
    out = tmp_path / "f"
    args = ["extract", str(out), "--dataset", str(data), "--model", w["model"], "--encoder", "dinov2"]
    args += ["--batch-size", "1", "--commit-every", "1", "--num-workers", "2", "--no-progress"]
    p = _featstore(*args, stderr=subprocess.PIPE, stdout=subprocess.PIPE, start_new_session=True, text=True)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and p.poll() is None:
        try:
            sets = json.loads((out / "featstore.json").read_text())["feature_sets"]
            if sets and next(iter(sets.values()))["rows_committed"] >= 2:
                break
        except (OSError, ValueError, StopIteration):
            pass
        time.sleep(0.05)
    if p.poll() is None:
        os.killpg(p.pid, signal.SIGINT)
    _, err = p.communicate(timeout=120)
    if p.returncode == 0:
        pytest.skip("the extraction finished before the interrupt")
    assert p.returncode == 130, err
    assert "Traceback" not in err and "KeyboardInterrupt" not in err
    assert "rows are committed" in err and "run the same command again to resume" in err
    assert len(err.strip().splitlines()) == 1, err


def test_broken_pipe_is_quiet(w):
    import subprocess

    p = _featstore("info", w["store"], "--json", stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    p.stdout.close()  # the reader goes away before featstore writes, as `| head` does
    err = p.stderr.read().decode()
    p.stderr.close()
    assert p.wait(timeout=120) == 141
    assert err == ""


def test_version(capsys):
    import featstore

    with pytest.raises(SystemExit) as exc:
        main(["--version"])
    assert exc.value.code == 0
    assert capsys.readouterr().out.strip() == f"featstore {featstore.__version__}"


@pytest.mark.skipif(not NO_CUDA, reason="needs a torch built without CUDA")
def test_extract_api_cuda_on_cpu_only_torch(w, tmp_path):
    import featstore
    from featstore.errors import CudaUnavailableError

    with pytest.raises(CudaUnavailableError, match="built without CUDA; use --device cpu"):
        featstore.extract(w["data"], "dinov2", w["model"], tmp_path / "c", device="cuda", progress=False)
    assert not (tmp_path / "c").exists()


def test_a_model_that_cannot_load_leaves_no_empty_store(w, tmp_path):
    import featstore
    from featstore.errors import ModelLoadError

    with pytest.raises(ModelLoadError, match="not a plain tensor file"):
        featstore.extract(w["data"], "dinov2", w["evil"], tmp_path / "new", num_workers=0, progress=False)
    assert not (tmp_path / "new").exists()
    (tmp_path / "mine").mkdir()  # a folder the user made stays, empty as it was
    with pytest.raises(ModelLoadError):
        featstore.extract(w["data"], "dinov2", w["evil"], tmp_path / "mine", num_workers=0, progress=False)
    assert (tmp_path / "mine").is_dir() and not list((tmp_path / "mine").iterdir())
