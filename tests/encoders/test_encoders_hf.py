"""The built-in DINOv2 and CLIP encoders on tiny random-init models, loaded offline through the real
path (save_pretrained folder -> registry -> lazy load), checked against the models' own hidden states."""

import json
import pickle

import pytest
import torch
from _encoder_models import make_clip, make_dinov2, random_images

from featstore.encoders import build_encoder, pool
from featstore.errors import ModelLoadError, UnknownLayerError

torch.set_num_threads(1)


pytestmark = pytest.mark.usefixtures("hub_offline")


@pytest.fixture(scope="module")
def dino_dir(tiny_dinov2_dir):
    return tiny_dinov2_dir


@pytest.fixture(scope="module")
def dino_reg_dir(tmp_path_factory):
    return make_dinov2(tmp_path_factory.mktemp("dinov2reg"), registers=4, layers=2)


@pytest.fixture(scope="module")
def clip_dir(tmp_path_factory):
    return make_clip(tmp_path_factory.mktemp("clip"))


@pytest.fixture(scope="module")
def clip_full_dir(tmp_path_factory):
    return make_clip(tmp_path_factory.mktemp("clipfull"), full=True)


@pytest.fixture(scope="module")
def images():
    return random_images(3)


def _reference(model_cls, folder, images):
    from transformers import AutoImageProcessor

    model = model_cls.from_pretrained(folder).eval()
    pixels = AutoImageProcessor.from_pretrained(folder)(images=images, return_tensors="pt")["pixel_values"]
    with torch.no_grad():
        return model(pixel_values=pixels, output_hidden_states=True)


def test_dinov2_layers_match_hidden_states(dino_dir, images):
    from transformers import Dinov2Model

    enc = build_encoder("dinov2", dino_dir)
    assert enc.layers() == [f"layer_{i}" for i in range(5)] + ["last"]
    assert enc.feature_size == 64
    assert enc._model is None  # nothing loaded yet
    out = enc.forward(enc.preprocess(images), enc.resolve_layers("all"))
    ref = _reference(Dinov2Model, dino_dir, images)
    for i in range(5):
        t = out[f"layer_{i}"]
        assert t.grid == (16, 16) and t.prefix.shape == (3, 1, 64) and t.patches.shape == (3, 256, 64)
        torch.testing.assert_close(torch.cat([t.prefix, t.patches], 1), ref.hidden_states[i])
    last = out["last"]
    torch.testing.assert_close(torch.cat([last.prefix, last.patches], 1), ref.last_hidden_state)
    torch.testing.assert_close(pool(last, "cls"), ref.last_hidden_state[:, 0])
    torch.testing.assert_close(pool(out["layer_2"], "mean"), ref.hidden_states[2][:, 1:].mean(1))


def test_dinov2_registers_are_prefix_tokens(dino_reg_dir, images):
    from transformers import Dinov2WithRegistersModel

    enc = build_encoder("dinov2", dino_reg_dir)
    out = enc.forward(enc.preprocess(images[:2]), ["layer_1", "last"])
    ref = _reference(Dinov2WithRegistersModel, dino_reg_dir, images[:2])
    assert out["layer_1"].prefix.shape == (2, 5, 64) and out["layer_1"].patches.shape == (2, 256, 64)
    torch.testing.assert_close(out["layer_1"].patches, ref.hidden_states[1][:, 5:])


def test_one_image_alone_equals_inside_a_batch(dino_dir, images):
    enc = build_encoder("dinov2", dino_dir)
    batch = enc.forward(enc.preprocess(images), ["layer_3"])["layer_3"]
    alone = enc.forward(enc.preprocess(images[1:2]), ["layer_3"])["layer_3"]
    torch.testing.assert_close(alone.patches[0], batch.patches[1], rtol=1e-5, atol=1e-5)


def test_clip_vision_folder(clip_dir, images):
    from transformers import CLIPVisionModel

    enc = build_encoder("clip", clip_dir)
    assert enc.layers() == [f"layer_{i}" for i in range(5)] + ["last_layer"]
    assert enc.resolve_layers("last") == ["last_layer"]
    out = enc.forward(enc.preprocess(images), ["layer_0", "layer_3", "last_layer"])
    ref = _reference(CLIPVisionModel, clip_dir, images)
    assert out["layer_3"].grid == (14, 14)
    for name, h in [
        ("layer_0", ref.hidden_states[0]),
        ("layer_3", ref.hidden_states[3]),
        ("last_layer", ref.last_hidden_state),
    ]:
        torch.testing.assert_close(torch.cat([out[name].prefix, out[name].patches], 1), h)


def test_clip_full_checkpoint_gives_the_vision_tower(clip_full_dir, images):
    from transformers import CLIPModel

    enc = build_encoder("clip", clip_full_dir)
    assert enc.feature_size == 64 and len(enc.layers()) == 6
    out = enc.forward(enc.preprocess(images), ["layer_4", "last_layer"])
    from transformers import AutoImageProcessor

    full = CLIPModel.from_pretrained(clip_full_dir).eval()
    pixels = AutoImageProcessor.from_pretrained(clip_full_dir)(images=images, return_tensors="pt")["pixel_values"]
    with torch.no_grad():
        ref = full.vision_model(pixel_values=pixels, output_hidden_states=True)
    torch.testing.assert_close(out["layer_4"].patches, ref.hidden_states[4][:, 1:])
    torch.testing.assert_close(out["last_layer"].prefix[:, 0], ref.last_hidden_state[:, 0])


def test_provenance(dino_dir):
    enc = build_encoder("dinov2", dino_dir)
    prov = enc.provenance()
    assert prov["encoder"] == "dinov2" and prov["model"] == str(dino_dir.resolve())
    assert len(prov["weights_sha256"]) == 64
    assert prov["preprocessing"]["processor_class"].startswith("BitImageProcessor")
    assert prov["preprocessing"]["crop_size"] == {"height": 224, "width": 224}
    json.dumps(prov)
    assert build_encoder("dinov2", dino_dir).provenance() == prov  # deterministic: resume compares it


def test_encoder_pickles_for_workers(dino_dir, images):
    enc = build_encoder("dinov2", dino_dir)
    enc.forward(enc.preprocess(images[:1]), ["last"])
    clone = pickle.loads(pickle.dumps(enc))
    assert clone._model is None
    torch.testing.assert_close(clone.preprocess(images[:1])["pixel_values"], enc.preprocess(images[:1])["pixel_values"])


def test_unknown_layer_lists_the_layers(dino_dir):
    enc = build_encoder("dinov2", dino_dir)
    with pytest.raises(UnknownLayerError, match=r"no layer '23'.*layer_0, .*layer_4, last"):
        enc.resolve_layers("1,23")


def test_missing_model_is_a_clear_error(tmp_path):
    enc = build_encoder("dinov2", tmp_path)
    with pytest.raises(ModelLoadError, match="no config.json"):
        enc.layers()
    enc = build_encoder("dinov2", "no-such-org/no-such-model")
    with pytest.raises(ModelLoadError, match="no-such-org/no-such-model"):
        enc.layers()


@pytest.mark.parametrize("which", ["dinov2", "clip"])
def test_a_missing_weight_is_an_error(tmp_path, which):
    from safetensors.torch import load_file, save_file

    folder = make_dinov2(tmp_path / "m") if which == "dinov2" else make_clip(tmp_path / "m", full=True)
    weights = load_file(str(folder / "model.safetensors"))
    dropped = next(k for k in weights if ("layer.1." in k or "layers.1." in k) and "text_model" not in k)
    del weights[dropped]
    save_file(weights, str(folder / "model.safetensors"), metadata={"format": "pt"})
    with pytest.raises(ModelLoadError, match=r"1 weight\(s\) .* missing from the checkpoint"):
        build_encoder(which, folder).load()
