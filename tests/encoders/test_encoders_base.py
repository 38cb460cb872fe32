"""The Encoder base class, pooling and the encoder registry (no model weights needed)."""

import pickle

import pytest
import torch

import featstore.plugins as plugins
from featstore.encoders import Encoder, EncoderEntry, LayerTokens, build_encoder, find_encoder, get_encoders, pool
from featstore.errors import UnknownEncoderError, UnknownLayerError


class FakeEncoder(Encoder):
    name = "fake"

    def list_layers(self):
        return [f"layer_{i}" for i in range(13)] + ["last"]


def test_resolve_layers():
    enc = FakeEncoder("nowhere")
    assert enc.resolve_layers("10,12") == ["layer_10", "layer_12"]
    assert enc.resolve_layers("last") == ["last"]
    assert enc.resolve_layers("all") == enc.layers()
    assert enc.resolve_layers(["layer_3", "3", "last"]) == ["layer_3", "last"]
    with pytest.raises(UnknownLayerError, match=r"no layer '40'.*layer_0, layer_1.*last"):
        enc.resolve_layers("1,40")
    with pytest.raises(UnknownLayerError):
        enc.resolve_layers(" , ")


def test_resolve_poolings():
    enc = FakeEncoder("nowhere")
    assert enc.resolve_poolings("cls,mean,cls") == ["cls", "mean"]
    with pytest.raises(UnknownLayerError, match="cls, mean, patch"):
        enc.resolve_poolings("max")


def test_pooling():
    prefix = torch.randn(2, 3, 8)
    patches = torch.randn(2, 6, 8)
    t = LayerTokens(prefix, patches, (2, 3))
    assert torch.equal(pool(t, "cls"), prefix[:, 0])
    assert torch.allclose(pool(t, "mean"), patches.mean(1))
    assert torch.equal(pool(t, "patch"), patches)
    assert t.grid_view().shape == (2, 2, 3, 8)
    with pytest.raises(UnknownLayerError, match="CLS"):
        pool(LayerTokens(prefix[:, :0], patches, (2, 3)), "cls")
    with pytest.raises(ValueError, match="grid"):
        LayerTokens(prefix, patches, (2, 2))


def test_pickling_leaves_the_model_behind():
    enc = FakeEncoder("nowhere")
    enc._model = torch.nn.Linear(2, 2)
    assert pickle.loads(pickle.dumps(enc))._model is None


def test_builtin_encoders_registered():
    entries = get_encoders()
    assert {"dinov2", "clip"} <= set(entries)
    assert entries["dinov2"].plugin == "featstore_encoders.dinov2"


def test_unknown_encoder_lists_known():
    with pytest.raises(UnknownEncoderError, match=r"no encoder 'vit9'.*clip.*dinov2"):
        find_encoder("vit9")


def test_register_checks_its_arguments():
    with pytest.raises(TypeError, match="subclass of featstore.encoders.Encoder"):
        EncoderEntry.unpack(object)
    name, cls, kw = EncoderEntry.unpack(FakeEncoder, aliases="fk")
    assert (name, cls, kw) == ("fake", FakeEncoder, {"aliases": ("fk",)})


def test_aliases_and_broken_plugins(monkeypatch):
    from featstore.hookspecs import hookimpl

    class Good:
        @hookimpl
        def register_encoders(self, register):
            register(FakeEncoder, aliases=["fake-alias"])

    class Broken:
        @hookimpl
        def register_encoders(self, register):
            register("not an encoder class")

    plugins.reset_plugins()
    try:
        pm = plugins.get_plugin_manager()
        pm.register(Good(), "good")
        pm.register(Broken(), "broken")
        with pytest.warns(plugins.PluginWarning, match="broken"):
            entry = find_encoder("fake-alias")
        assert entry.cls is FakeEncoder and entry.plugin == "good"
        with pytest.warns(plugins.PluginWarning):
            enc = build_encoder("fake", "somewhere")
        assert isinstance(enc, FakeEncoder) and enc.model_id == "somewhere"
    finally:
        plugins.reset_plugins()


def test_a_missing_package_says_what_to_install():
    from featstore.errors import EncoderError

    class NeedsSomething(Encoder):
        name = "needy"

        def list_layers(self):
            import featstore_no_such_package  # noqa: F401

    with pytest.raises(EncoderError, match="needs the package 'featstore_no_such_package'.*pip install"):
        NeedsSomething("x").layers()
