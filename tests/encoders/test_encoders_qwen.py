"""The Qwen2-VL and Qwen2.5-VL vision-tower encoder on tiny random-init towers saved as full VL
checkpoints (tower under ``visual.`` / ``model.visual.``, sharded or not) or as a bare tower, loaded
offline through the registry: every weight loaded, raster order, window order undone, batch-invariant."""

import json

import numpy as np
import pytest
import torch
from _encoder_models import make_qwen, random_images
from PIL import Image

from featstore.encoders import build_encoder, find_encoder, pool
from featstore.errors import EncoderError, ModelLoadError, UnknownLayerError

torch.set_num_threads(1)
FAMILIES = ["qwen2-vl", "qwen2.5-vl"]


pytestmark = pytest.mark.usefixtures("hub_offline")


@pytest.fixture(scope="module", params=FAMILIES)
def checkpoint(request, tmp_path_factory):
    """(family, folder, the tower the folder was written from)."""
    folder, tower = make_qwen(tmp_path_factory.mktemp(request.param), request.param, "sharded")
    return request.param, folder, tower


@pytest.fixture(scope="module")
def images():
    return random_images(3, seed=5, size=(224, 224))


def test_aliases_and_layers(checkpoint):
    family, folder, _ = checkpoint
    assert find_encoder("qwen2-vl").cls is find_encoder("qwen").cls is find_encoder("qwen2.5-vl").cls
    enc = build_encoder(family, folder)
    assert enc.family == family
    assert enc.layers() == [f"layer_{i}" for i in range(5)] + ["visual_features"]
    assert enc.resolve_layers("last") == ["visual_features"]
    assert enc.feature_size == 64 and enc.merged_size() == 96
    with pytest.raises(UnknownLayerError, match="mean, patch"):
        enc.resolve_poolings("cls")


def test_every_weight_is_loaded(checkpoint):
    _, folder, tower = checkpoint
    enc = build_encoder("qwen", folder)
    loaded = enc.model.state_dict()
    for key, value in tower.state_dict().items():
        assert torch.equal(loaded[key], value), key


@pytest.mark.parametrize("layout", ["single", "tower"])
def test_other_checkpoint_layouts(tmp_path, layout):
    folder, tower = make_qwen(tmp_path / "m", "qwen2.5-vl" if layout == "single" else "qwen2-vl", layout)
    loaded = build_encoder("qwen", folder).model.state_dict()
    assert all(torch.equal(loaded[k], v) for k, v in tower.state_dict().items())


def test_a_missing_weight_is_an_error(tmp_path):
    folder, _ = make_qwen(tmp_path / "m", "qwen2-vl", "sharded")
    index = json.loads((folder / "model.safetensors.index.json").read_text())
    del index["weight_map"]["visual.blocks.2.mlp.fc1.weight"]
    (folder / "model.safetensors.index.json").write_text(json.dumps(index))
    with pytest.raises(ModelLoadError, match=r"1 missing \(e.g. \['blocks.2.mlp.fc1.weight'\]\)"):
        build_encoder("qwen", folder).load()


def test_layers_match_the_towers_own_hidden_states(checkpoint, images):
    family, folder, tower = checkpoint
    enc = build_encoder("qwen", folder)
    inputs = enc.preprocess(images)
    out = enc.forward(inputs, enc.layers())
    with torch.no_grad():
        ref = tower(inputs["pixel_values"], grid_thw=inputs["image_grid_thw"], output_hidden_states=True)
    assert out["layer_0"].grid == (16, 16) and out["layer_0"].patches.shape == (3, 256, 64)
    assert out["layer_0"].prefix.shape == (3, 0, 64)
    assert out["visual_features"].grid == (8, 8) and out["visual_features"].patches.shape == (3, 64, 96)
    torch.testing.assert_close(out["visual_features"].patches.reshape(-1, 96), ref.pooler_output)
    # the tower's own block outputs (hidden_states[i] = block i-1's output), put in raster order by the
    # recipe of ENCODER-NOTES: undo the window order (Qwen2.5), then the 2x2-block order
    order = None
    if family == "qwen2.5-vl":
        from transformers.vision_utils import get_vision_window_index

        c = tower.config
        window, _ = get_vision_window_index(
            inputs["image_grid_thw"], spatial_merge_size=2, window_size=c.window_size, patch_size=14
        )
        order = torch.argsort(window)
    for i in range(1, 5):
        theirs = ref.hidden_states[i]
        if order is not None:
            theirs = theirs.reshape(-1, 4, 64)[order].reshape(-1, 64)
        theirs = theirs.reshape(3, 1, 8, 8, 2, 2, 64).permute(0, 1, 2, 4, 3, 5, 6).reshape(3, 256, 64)
        torch.testing.assert_close(out[f"layer_{i}"].patches, theirs)
    torch.testing.assert_close(pool(out["layer_4"], "mean"), out["layer_4"].patches.mean(1))


def _with_patch(image: Image.Image, r: int, c: int) -> Image.Image:
    arr = np.array(image).copy()
    arr[r * 14 : (r + 1) * 14, c * 14 : (c + 1) * 14] = 255 - arr[r * 14 : (r + 1) * 14, c * 14 : (c + 1) * 14]
    return Image.fromarray(arr)


@pytest.mark.parametrize("r,c", [(0, 0), (3, 10), (13, 6), (15, 15)])
def test_raster_order_single_differing_patch(checkpoint, images, r, c):
    family, folder, _ = checkpoint
    enc = build_encoder("qwen", folder)
    plain, changed = images[0], _with_patch(images[0], r, c)
    out = enc.forward(enc.preprocess([plain, changed]), ["layer_0", "layer_1"])
    grid0 = out["layer_0"].grid_view()
    diff = (grid0[0] - grid0[1]).abs().amax(-1) > 1e-6
    assert diff.nonzero().tolist() == [[r, c]]
    # block 0 attends within windows (Qwen2.5: 8x8 patches) or the whole image (Qwen2): with the window
    # order undone, the change spreads exactly over the patches that can see (r, c)
    grid1 = out["layer_1"].grid_view()
    spread = (grid1[0] - grid1[1]).abs().amax(-1) > 1e-6
    if family == "qwen2.5-vl":
        expected = torch.zeros(16, 16, dtype=torch.bool)
        expected[r // 8 * 8 : (r // 8 + 1) * 8, c // 8 * 8 : (c // 8 + 1) * 8] = True
        assert torch.equal(spread, expected)
    else:
        assert spread.all()


def test_one_image_alone_equals_inside_a_batch(checkpoint, images):
    _, folder, _ = checkpoint
    enc = build_encoder("qwen", folder)
    batch = enc.forward(enc.preprocess(images), ["layer_2", "visual_features"])
    alone = enc.forward(enc.preprocess(images[2:3]), ["layer_2", "visual_features"])
    for layer in ("layer_2", "visual_features"):
        torch.testing.assert_close(alone[layer].patches[0], batch[layer].patches[2], rtol=1e-5, atol=1e-5)


def test_mixed_grids_in_a_batch_are_refused(checkpoint):
    _, folder, _ = checkpoint
    enc = build_encoder("qwen", folder)
    mixed = random_images(1, size=(224, 224)) + random_images(1, size=(448, 112))
    with pytest.raises(EncoderError, match="different patch grids"):
        enc.forward(enc.preprocess(mixed), ["layer_1"])


def test_extract_with_qwen(checkpoint, tmp_path):
    from _encoder_models import make_dataset

    import featstore
    from featstore import FeatureStore

    family, folder, _ = checkpoint
    data = make_dataset(tmp_path, n_images=5, repeats=(1,), size=(224, 224))
    result = featstore.extract(
        str(data),
        family,
        str(folder),
        tmp_path / "f",
        layers="2,last",
        pooling="mean,patch",
        batch_size=2,
        num_workers=0,
        progress=False,
    )
    store = FeatureStore.open(tmp_path / "f")
    assert result.keys == [
        "qwen/layer_2/mean",
        "qwen/layer_2/patch",
        "qwen/visual_features/mean",
        "qwen/visual_features/patch",
    ]
    assert store["qwen/visual_features/patch"].shape == (6, 64, 96) and store["qwen/layer_2/mean"].shape == (6, 64)
    assert store["qwen/layer_2/mean"].metadata["encoder"] == "qwen"
    assert (tmp_path / "f" / "qwen" / "visual_features" / "mean.pt").exists()
