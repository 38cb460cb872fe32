"""The example third-party plugin (plugins/example-encoder) is found through its ``featstore`` entry
point: installed into the environment by this module's setup, never imported by the test itself."""

import subprocess
import sys
from importlib import metadata
from pathlib import Path

import numpy as np
import pytest
import torch

import featstore.plugins as plugins
from featstore import FeatureStore
from featstore.cli import main
from featstore.encoders import get_encoders

DIST = "featstore-example-encoder"
SOURCE = Path(__file__).resolve().parents[2] / "plugins" / "example-encoder"


@pytest.fixture(scope="session")
def installed():
    """Install the example distribution into this environment (once; about a second) if it is not there."""
    try:
        metadata.distribution(DIST)
    except metadata.PackageNotFoundError:
        proc = subprocess.run(
            [sys.executable, "-m", "pip", "install", "--quiet", "--no-build-isolation", "--no-deps", str(SOURCE)],
            capture_output=True,
            text=True,
        )
        assert proc.returncode == 0, f"installing {SOURCE} failed:\n{proc.stdout}\n{proc.stderr}"
    return metadata.distribution(DIST)


@pytest.fixture
def fresh(monkeypatch):
    monkeypatch.delenv("FEATSTORE_LOAD_PLUGINS", raising=False)
    sys.modules.pop("featstore_example_encoder", None)
    plugins.reset_plugins()
    yield monkeypatch
    plugins.reset_plugins()


def test_found_through_its_entry_point(installed, fresh):
    eps = [ep for ep in metadata.entry_points(group="featstore") if ep.name == "example-encoder"]
    assert len(eps) == 1 and eps[0].value == "featstore_example_encoder"
    assert "featstore_example_encoder" not in sys.modules  # nothing imported it yet...
    entry = get_encoders()["patchcolor"]
    assert entry.plugin == "example-encoder" and entry.aliases == ("patch-color",)  # ...the entry point did
    assert "featstore_example_encoder" in sys.modules
    assert "example-encoder" in plugins.plugin_names()


def test_the_environment_variable_chooses(installed, fresh):
    fresh.setenv("FEATSTORE_LOAD_PLUGINS", "")
    plugins.reset_plugins()
    assert "patchcolor" not in get_encoders()
    fresh.setenv("FEATSTORE_LOAD_PLUGINS", "featstore-example-encoder")  # by distribution name
    plugins.reset_plugins()
    assert "patchcolor" in get_encoders() and "dinov2" in get_encoders()


def test_listed_and_used_by_the_command_line(installed, fresh, tmp_path, capsys):
    from _encoder_models import make_dataset

    assert main(["encoders"]) == 0
    assert "patchcolor   example-encoder" in capsys.readouterr().out
    data = make_dataset(tmp_path, n_images=4, repeats=(), size=(224, 224))
    code = main(
        [
            "extract",
            "--dataset",
            str(data),
            "--encoder",
            "patch-color",
            "--model",
            "patch16",
            "--layers",
            "all",
            "--pooling",
            "cls,patch",
            "--out",
            str(tmp_path / "f"),
            "--num-workers",
            "0",
            "--no-progress",
            "--store-dtype",
            "float32",
        ]
    )
    assert code == 0, capsys.readouterr().err
    store = FeatureStore.open(tmp_path / "f")
    assert store.keys() == [
        "patchcolor/color/cls",
        "patchcolor/color/patch",
        "patchcolor/contrast/cls",
        "patchcolor/contrast/patch",
    ]
    from PIL import Image

    import datasets

    first = np.asarray(Image.open(datasets.load_from_disk(str(data))[0]["image_path"]), dtype=np.float32) / 255
    torch.testing.assert_close(
        store["patchcolor/color/cls"][0], torch.from_numpy(first.mean((0, 1))), rtol=1e-4, atol=1e-4
    )
    assert store["patchcolor/color/patch"].shape == (4, 196, 3)
    torch.testing.assert_close(
        store["patchcolor/color/patch"][0, 15], torch.from_numpy(first[16:32, 16:32].mean((0, 1))), rtol=1e-4, atol=1e-4
    )
