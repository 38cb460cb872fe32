"""featstore extract / featstore.extract on a tiny random-init DINOv2 and a small saved dataset:
what it writes, reruns, conflicts, and the errors raised before any work."""

import json
import shutil

import pytest
import torch
from _encoder_models import make_dataset

import featstore
from featstore import FeatureStore
from featstore.cli import main
from featstore.encoders import build_encoder, pool
from featstore.errors import UnknownEncoderError, UnknownLayerError
from featstore.extraction import ExtractionError, feature_keys

torch.set_num_threads(1)


pytestmark = pytest.mark.usefixtures("hub_offline")


@pytest.fixture(scope="module")
def model_dir(tiny_dinov2_dir):
    return tiny_dinov2_dir


@pytest.fixture(scope="module")
def dataset_dir(tmp_path_factory):
    return make_dataset(tmp_path_factory.mktemp("data"), n_images=10, repeats=(0, 3))


@pytest.fixture(scope="module")
def extracted(tmp_path_factory, model_dir, dataset_dir):
    out = tmp_path_factory.mktemp("features")
    result = featstore.extract(
        str(dataset_dir),
        "dinov2",
        str(model_dir),
        out,
        layers="1,last",
        pooling="cls,mean,patch",
        batch_size=4,
        num_workers=1,
        progress=False,
    )
    return out, result


def test_keys():
    assert feature_keys("dinov2", ["layer_10"], ["cls"]) == {("layer_10", "cls"): "dinov2/layer_10"}
    assert feature_keys("d", ["last"], ["cls", "mean"]) == {
        ("last", "cls"): "d/last/cls",
        ("last", "mean"): "d/last/mean",
    }


def test_writes_every_layer_and_pooling(extracted, model_dir, dataset_dir):
    from PIL import Image

    import datasets

    out, result = extracted
    assert not result.already_complete and result.rows == 12 and result.images == 10 and result.images_encoded == 10
    store = FeatureStore.open(out)
    assert store.keys() == sorted(f"dinov2/{l}/{p}" for l in ("layer_1", "last") for p in ("cls", "mean", "patch"))
    ds = datasets.load_from_disk(str(dataset_dir))
    enc = build_encoder("dinov2", model_dir)
    images = [Image.open(p).convert("RGB") for p in ds["image_path"]]
    tokens = enc.forward(enc.preprocess(images), ["layer_1", "last"])
    for layer in ("layer_1", "last"):
        for p in ("cls", "mean", "patch"):
            fs = store[f"dinov2/{layer}/{p}"]
            assert fs.dtype == torch.float16 and fs.shape == (12, *((256, 64) if p == "patch" else (64,)))
            torch.testing.assert_close(fs[:].float(), pool(tokens[layer], p).half().float(), rtol=2e-3, atol=2e-3)
            assert fs.labels.tolist() == ds["label"]
            meta = fs.metadata
            assert (meta["encoder"], meta["layer"], meta["pooling"]) == ("dinov2", layer, p)
            assert len(meta["weights_sha256"]) == 64 and meta["preprocessing"]["crop_size"]["height"] == 224
            assert meta["spatial_targets"]["target"] == "label"
    # rows sharing an image share its features, bit for bit
    fs = store["dinov2/last/cls"]
    assert torch.equal(fs[10], fs[0]) and torch.equal(fs[11], fs[3])
    store.verify()


def test_pt_exports_beside_the_sets(extracted):
    out, result = extracted
    assert sorted(p.name for p in (out / "dinov2" / "last").glob("*.pt")) == ["cls.pt", "mean.pt", "patch.pt"]
    payload = torch.load(out / "dinov2" / "last" / "cls.pt", weights_only=True)
    assert payload["features"].shape == (12, 64) and payload["labels"].shape == (12,)
    assert payload["metadata"]["layer"] == "last"


def test_second_run_does_nothing(extracted, model_dir, dataset_dir, capsys):
    out, _ = extracted
    before = {p: p.stat().st_mtime_ns for p in out.rglob("*.safetensors")}
    code = main(
        [
            "extract",
            "--dataset",
            str(dataset_dir),
            "--encoder",
            "dinov2",
            "--model",
            str(model_dir),
            "--layers",
            "1,last",
            "--pooling",
            "cls,mean,patch",
            "--out",
            str(out),
            "--no-progress",
        ]
    )
    assert code == 0
    assert "already complete" in capsys.readouterr().out
    assert before == {p: p.stat().st_mtime_ns for p in out.rglob("*.safetensors")}


def test_single_pooling_uses_the_seed_keys(tmp_path, model_dir, dataset_dir, capsys):
    code = main(
        [
            "extract",
            "--dataset",
            str(dataset_dir),
            "--encoder",
            "dinov2",
            "--model",
            str(model_dir),
            "--layers",
            "2",
            "--out",
            str(tmp_path / "f"),
            "--num-workers",
            "0",
            "--no-progress",
            "--target",
            "relation",
            "--store-dtype",
            "float32",
        ]
    )
    assert code == 0, capsys.readouterr().err
    store = FeatureStore.open(tmp_path / "f")
    assert store.keys() == ["dinov2/layer_2"] and store["dinov2/layer_2"].dtype == torch.float32
    assert store["dinov2/layer_2"].labels.tolist() == [0, 1, 2, 3] * 3
    assert (tmp_path / "f" / "dinov2" / "layer_2.pt").exists()


def test_other_preprocessing_refuses_unless_overwrite(tmp_path, model_dir, dataset_dir):
    out = tmp_path / "f"
    featstore.extract(str(dataset_dir), "dinov2", str(model_dir), out, layers="last", num_workers=0, progress=False)
    other = tmp_path / "other"
    shutil.copytree(model_dir, other)
    cfg = json.loads((other / "preprocessor_config.json").read_text())
    cfg["size"] = {"shortest_edge": 240}
    (other / "preprocessor_config.json").write_text(json.dumps(cfg))
    with pytest.raises(ExtractionError, match=r"'dinov2/last'.*different model, preprocessing.*--overwrite"):
        featstore.extract(str(dataset_dir), "dinov2", str(other), out, layers="last", num_workers=0, progress=False)
    result = featstore.extract(
        str(dataset_dir), "dinov2", str(other), out, layers="last", num_workers=0, progress=False, overwrite=True
    )
    assert result.images_encoded == 10
    store = FeatureStore.open(out)
    assert store["dinov2/last"].metadata["preprocessing"]["size"] == {"shortest_edge": 240}
    store.verify()


def test_errors_before_any_work(tmp_path, model_dir, dataset_dir):
    import datasets

    out = tmp_path / "f"
    run = lambda **kw: featstore.extract(
        **{
            "dataset": str(dataset_dir),
            "encoder": "dinov2",
            "model": str(model_dir),
            "out": out,
            "progress": False,
            "num_workers": 0,
            **kw,
        }
    )
    with pytest.raises(UnknownEncoderError, match=r"no encoder 'dino'.*clip.*dinov2"):
        run(encoder="dino")
    with pytest.raises(UnknownLayerError, match=r"no layer '23'.*layer_0.*last"):
        run(layers="1,23")
    with pytest.raises(UnknownLayerError, match="poolings"):
        run(pooling="max")
    ds = datasets.load_from_disk(str(dataset_dir))
    paths = list(ds["image_path"])
    paths[5] = str(tmp_path / "gone.png")
    with pytest.raises(ExtractionError, match=r"row 5: image file .*gone.png does not exist"):
        run(dataset=ds.remove_columns("image_path").add_column("image_path", paths))
    with pytest.raises(ExtractionError, match=r"no column 'image_path'"):
        run(dataset=ds.remove_columns("image_path"))
    with pytest.raises(ExtractionError, match=r"no column\(s\) \['spatial_relation'\].*--no-labels"):
        run(dataset=ds.remove_columns("spatial_relation"))
    assert not out.exists()  # nothing was started


def test_cli_errors_are_one_line(tmp_path, model_dir, dataset_dir, capsys):
    code = main(
        [
            "extract",
            "--dataset",
            str(dataset_dir),
            "--encoder",
            "nope",
            "--model",
            str(model_dir),
            "--out",
            str(tmp_path / "f"),
        ]
    )
    assert code == 1 and "known encoders: clip, dinov2" in capsys.readouterr().err


def test_encoders_command(capsys):
    assert main(["encoders"]) == 0
    out = capsys.readouterr().out
    assert "dinov2" in out and "featstore_encoders.dinov2" in out and "clip" in out
    assert main(["encoders", "--json"]) == 0
    assert {e["name"] for e in json.loads(capsys.readouterr().out)} >= {"dinov2", "clip"}


def test_an_unreadable_image_names_its_row(tmp_path, model_dir):
    import datasets

    data = make_dataset(tmp_path, n_images=6, repeats=())
    ds = datasets.load_from_disk(str(data))
    (tmp_path / "images" / "0004.png").write_bytes(b"not a png")
    with pytest.raises(ExtractionError, match=r"row 4: cannot read image .*0004.png"):
        featstore.extract(ds, "dinov2", str(model_dir), tmp_path / "f", batch_size=2, num_workers=1, progress=False)
    store = FeatureStore.open(tmp_path / "f")  # the batches before it are committed: a rerun continues
    assert store.info("dinov2/last").rows_committed == 4


def test_import_featstore_stays_light():
    import subprocess
    import sys

    code = (
        "import sys, featstore, featstore.cli, featstore.encoders\n"
        "names = sorted(featstore.encoders.get_encoders())\n"
        "heavy = [m for m in ('transformers', 'datasets') if m in sys.modules]\n"
        "assert not heavy, heavy\n"
        "assert {'dinov2', 'clip', 'qwen'} <= set(names), names\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr


def test_interrupted_before_finishing_then_finished_without_encoding(tmp_path, model_dir, dataset_dir, monkeypatch):
    from featstore.store.writer import FeatureWriter

    def interrupted(self):
        raise KeyboardInterrupt

    with monkeypatch.context() as m:
        m.setattr(FeatureWriter, "finish", interrupted)
        with pytest.raises(KeyboardInterrupt):
            featstore.extract(
                str(dataset_dir),
                "dinov2",
                str(model_dir),
                tmp_path / "f",
                layers="1,last",
                num_workers=0,
                progress=False,
                commit_every=100,
            )
    store = FeatureStore.open(tmp_path / "f")
    assert [store.info(k).rows_committed for k in store.keys()] == [12, 12]  # committed on the way out
    assert not any(store.info(k).complete for k in store.keys())
    result = featstore.extract(
        str(dataset_dir), "dinov2", str(model_dir), tmp_path / "f", layers="1,last", num_workers=0, progress=False
    )
    assert result.images_encoded == 0 and not result.already_complete
    store = FeatureStore.open(tmp_path / "f")
    assert all(store.info(k).complete for k in store.keys())
    assert (tmp_path / "f" / "dinov2" / "last.pt").exists()


@pytest.mark.parametrize("flag", ["--dtype", "--store-dtype"])
def test_extract_compact_int8(tmp_path, model_dir, dataset_dir, capsys, flag):
    out = tmp_path / "f"
    args = ["extract", "--dataset", str(dataset_dir), "--encoder", "dinov2", "--model", str(model_dir)]
    args += ["--layers", "1", "--pooling", "cls,patch", "--out", str(out), "--num-workers", "0", "--no-progress"]
    assert main([*args, flag, "int8"]) == 0, capsys.readouterr().err
    store = FeatureStore.open(out)
    plain = featstore.extract(
        str(dataset_dir),
        "dinov2",
        str(model_dir),
        tmp_path / "plain",
        layers="1",
        pooling="cls,patch",
        num_workers=0,
        progress=False,
    )
    for key in plain.keys:
        q, ref = store[key], FeatureStore.open(tmp_path / "plain")[key]
        assert q.quant.scheme == "int8" and q.record.dtype == "int8" and q.dtype == torch.float16
        bound = q.scales.unsqueeze(-1) / 2 + 1e-3 * ref[:].float().abs()
        assert bool(((q[:].float() - ref[:].float()).abs() <= bound).all()), key
        assert torch.load(q.path.with_suffix(".pt"), weights_only=True)["features"].dtype == torch.float16
    assert store.verify()["rows_without_checksum"] == 0
    assert main([*args, flag, "int8"]) == 0  # a second run finds the sets complete
    assert main([*args, "--store-dtype", "float8_e4m3"]) == 1  # other settings: refused without --overwrite
    assert "store dtype" in capsys.readouterr().err


def test_workers_leave_ctrl_c_to_the_main_process():
    """A decoding worker ignores SIGINT and stays quiet on a lost peer (an OSError from its fd-sharing
    thread), while any other uncaught error still reaches stderr."""
    import subprocess
    import sys

    code = (
        "import signal, sys\n"
        "from featstore.extraction.encode import _worker_leaves_ctrl_c_to_the_main_process as init\n"
        "init(0)\n"
        "assert signal.getsignal(signal.SIGINT) is signal.SIG_IGN\n"
        "sys.excepthook(BrokenPipeError, BrokenPipeError(32, 'Broken pipe'), None)\n"
        "sys.excepthook(EOFError, EOFError(), None)\n"
        "sys.excepthook(ValueError, ValueError('a real bug'), None)\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "Broken pipe" not in done.stderr and "EOFError" not in done.stderr
    assert "ValueError: a real bug" in done.stderr
