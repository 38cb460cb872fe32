"""The vision towers of Qwen2-VL and Qwen2.5-VL through ``transformers``, from a full VL checkpoint
(the tower's weights under the ``visual.`` prefix) or a saved vision tower.

Layers: ``layer_0`` (the patch embedding), ``layer_1`` .. ``layer_D`` (block i's output), and
``visual_features`` (the patch merger's output, one token per 2x2 patches, the size the language
model sees). There is no CLS token, so the poolings are ``mean`` and ``patch``. Patch tokens come out
in raster order: the processor's block-major order (2x2 blocks) is undone, and so is Qwen2.5's
window order.

Why the weights are loaded by hand: the vision class's ``from_pretrained`` on a full VL checkpoint
silently leaves the weights randomly initialised (the keys carry the ``visual.`` prefix). Here every
tensor of the tower is read from the checkpoint (through the safetensors index when sharded), and a
missing or unexpected weight is an error.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from featstore.encoders import Encoder, LayerTokens
from featstore.errors import EncoderError, ModelLoadError
from featstore.hookspecs import hookimpl

from ._hf import load_image_processor

#: key prefixes under which a checkpoint may hold the vision tower (original, transformers 5 layout, bare)
PREFIXES: tuple[str, ...] = ("visual.", "model.visual.", "")
_FAMILIES = {
    "qwen2_vl": "qwen2-vl",
    "qwen2_vl_vision": "qwen2-vl",
    "qwen2_5_vl": "qwen2.5-vl",
    "qwen2_5_vl_vision": "qwen2.5-vl",
}


class QwenVisionEncoder(Encoder):
    """Qwen2-VL / Qwen2.5-VL vision tower (Qwen/Qwen2-VL-*, Qwen/Qwen2.5-VL-*), every block and the merger."""

    name = "qwen"
    poolings = ("mean", "patch")

    # ---- configuration ----------------------------------------------------------------------
    def _raw_config(self) -> dict[str, Any]:
        return json.loads(Path(self.resolve_file("config.json")).read_text())

    @property
    def family(self) -> str:
        """``qwen2-vl`` or ``qwen2.5-vl``, from the checkpoint's ``model_type``."""
        model_type = self._raw_config().get("model_type", "")
        if model_type not in _FAMILIES:
            raise ModelLoadError(
                f"{self.model_id}: model_type {model_type!r} is not a Qwen2-VL or Qwen2.5-VL "
                f"checkpoint (expected one of {sorted(_FAMILIES)})"
            )
        return _FAMILIES[model_type]

    def load_config(self) -> Any:
        raw = self._raw_config()
        vision = raw.get("vision_config", raw)
        if self.family == "qwen2-vl":
            from transformers.models.qwen2_vl.configuration_qwen2_vl import Qwen2VLVisionConfig as Config
        else:
            from transformers.models.qwen2_5_vl.configuration_qwen2_5_vl import Qwen2_5_VLVisionConfig as Config
        fields = {k: v for k, v in vision.items() if k not in ("architectures", "model_type", "transformers_version")}
        return Config(**fields)

    @property
    def feature_size(self) -> int:
        """Width of the blocks' tokens (``visual_features`` has the merger's own width)."""
        c = self.config
        return int(c.embed_dim if self.family == "qwen2-vl" else c.hidden_size)

    def merged_size(self) -> int:
        """Width of ``visual_features``."""
        c = self.config
        return int(c.hidden_size if self.family == "qwen2-vl" else c.out_hidden_size)

    def list_layers(self) -> list[str]:
        return [f"layer_{i}" for i in range(self.config.depth + 1)] + ["visual_features"]

    # ---- loading ----------------------------------------------------------------------------
    def load_processor(self) -> Any:
        return load_image_processor(str(self.model_folder()))

    def load_model(self) -> torch.nn.Module:
        if self.family == "qwen2-vl":
            from transformers.models.qwen2_vl.modeling_qwen2_vl import Qwen2VisionTransformerPretrainedModel as Tower
        else:
            from transformers.models.qwen2_5_vl.modeling_qwen2_5_vl import (
                Qwen2_5_VisionTransformerPretrainedModel as Tower,
            )
        model = Tower._from_config(self.config)
        load_tower_weights(model, self.model_folder())
        return model

    # ---- the forward pass -------------------------------------------------------------------
    def encode(self, model, inputs, layers: Sequence[str]) -> dict[str, LayerTokens]:
        pixel_values, grid_thw = inputs["pixel_values"], inputs["image_grid_thw"]
        grids = {tuple(int(v) for v in g) for g in grid_thw}
        if len(grids) != 1:
            raise EncoderError(
                f"encoder 'qwen': the images of one batch got different patch grids {sorted(grids)} (Qwen keeps "
                "each image's aspect ratio); give all images one size, or set the processor's min_pixels = max_pixels "
                "and use images of one aspect ratio"
            )
        t, h, w = grids.pop()
        captured: dict[str, torch.Tensor] = {}
        handles = []
        wanted = [int(layer.split("_")[1]) for layer in layers if layer != "visual_features"]
        for i in wanted:
            module = model.patch_embed if i == 0 else model.blocks[i - 1]
            handles.append(module.register_forward_hook(_capture(captured, f"layer_{i}")))
        try:
            out = model(pixel_values, grid_thw=grid_thw)
        finally:
            for handle in handles:
                handle.remove()
        merged = out.pooler_output if hasattr(out, "pooler_output") else out
        reverse = None
        if self.family == "qwen2.5-vl" and any(i > 0 for i in wanted):
            reverse = torch.argsort(window_index(model, grid_thw).to(pixel_values.device))
        n_images = grid_thw.shape[0]
        result = {}
        for layer in layers:
            if layer == "visual_features":
                tokens = merged.reshape(n_images, t * (h // 2) * (w // 2), -1)
                grid = (h // 2, w // 2)
                patches = tokens if t == 1 else tokens.reshape(n_images, t, -1, tokens.shape[-1]).mean(1)
            else:
                x = captured[layer]
                if reverse is not None and layer != "layer_0":
                    x = x.reshape(-1, 4, x.shape[-1])[reverse].reshape(-1, x.shape[-1])
                patches = to_raster(x, n_images, t, h, w)
                grid = (h, w)
            result[layer] = LayerTokens(patches[:, :0], patches, grid)
        return result


def _capture(store: dict, name: str):
    def hook(module, args, output):
        store[name] = output[0] if isinstance(output, (tuple, list)) else output

    return hook


def to_raster(x: torch.Tensor, n_images: int, t: int, h: int, w: int) -> torch.Tensor:
    """``(n*t*h*w, D)`` tokens in the processor's block-major order ``(t, h/2, w/2, 2, 2)`` per image ->
    ``(n, h*w, D)`` in raster order (the ``t`` frames of a still image are averaged; t is 1 for images)."""
    d = x.shape[-1]
    x = x.reshape(n_images, t, h // 2, w // 2, 2, 2, d).permute(0, 1, 2, 4, 3, 5, 6).reshape(n_images, t, h * w, d)
    return x[:, 0] if t == 1 else x.mean(1)


def window_index(model, grid_thw: torch.Tensor) -> torch.Tensor:
    """The order in which Qwen2.5-VL's tower holds the merged units (groups of 2x2 tokens)."""
    if hasattr(model, "get_window_index"):  # transformers 4.x
        return model.get_window_index(grid_thw)[0]
    from transformers.vision_utils import get_vision_window_index

    c = model.config
    return get_vision_window_index(
        grid_thw, spatial_merge_size=c.spatial_merge_size, window_size=c.window_size, patch_size=c.patch_size
    )[0]


def checkpoint_tensors(folder: Path) -> dict[str, Path]:
    """Every tensor name of a safetensors checkpoint folder -> the file holding it (sharded or not)."""
    index = folder / "model.safetensors.index.json"
    if index.is_file():
        weight_map = json.loads(index.read_text())["weight_map"]
        return {name: folder / file for name, file in weight_map.items()}
    files = sorted(folder.glob("*.safetensors"))
    if not files:
        raise ModelLoadError(
            f"{folder} holds no .safetensors weights; featstore loads Qwen towers from safetensors only"
        )
    from safetensors import safe_open

    names: dict[str, Path] = {}
    for path in files:
        with safe_open(str(path), framework="pt") as f:
            names.update({name: path for name in f.keys()})
    return names


def load_tower_weights(model: torch.nn.Module, folder: Path) -> None:
    """Load the tower's weights from ``folder`` into ``model``; every weight must be found, under one of
    :data:`PREFIXES`, with the right shape, else :class:`ModelLoadError` names what is wrong."""
    from safetensors import safe_open

    names = checkpoint_tensors(folder)
    wanted = model.state_dict()
    prefix = next((p for p in PREFIXES if any(f"{p}{k}" in names for k in wanted)), None)
    if prefix is None:
        raise ModelLoadError(
            f"{folder}: no vision-tower weights found (looked for keys like 'visual.{next(iter(wanted))}')"
        )
    missing = [k for k in wanted if f"{prefix}{k}" not in names]
    ours = [n for n in names if n.startswith(prefix) and (prefix or n in wanted)]
    unexpected = [n[len(prefix) :] for n in ours if n[len(prefix) :] not in wanted]
    if missing or unexpected:
        raise ModelLoadError(
            f"{folder}: the vision tower's weights under {prefix!r} do not match the model: "
            f"{len(missing)} missing (e.g. {missing[:3]}), {len(unexpected)} unexpected (e.g. {unexpected[:3]}); "
            "is the checkpoint complete and of the family its config names?"
        )
    state: dict[str, torch.Tensor] = {}
    by_file: dict[Path, list[str]] = {}
    for key in wanted:
        by_file.setdefault(names[f"{prefix}{key}"], []).append(key)
    for path, keys in by_file.items():
        with safe_open(str(path), framework="pt") as f:
            for key in keys:
                state[key] = f.get_tensor(f"{prefix}{key}")
    bad = [k for k, v in state.items() if tuple(v.shape) != tuple(wanted[k].shape)]
    if bad:
        raise ModelLoadError(
            f"{folder}: weights {bad[:3]} have shapes {[tuple(state[k].shape) for k in bad[:3]]}, "
            f"the config implies {[tuple(wanted[k].shape) for k in bad[:3]]}"
        )
    result = model.load_state_dict(state, strict=True)
    if getattr(result, "missing_keys", None) or getattr(result, "unexpected_keys", None):
        raise ModelLoadError(f"{folder}: incomplete load: {result}")


@hookimpl
def register_encoders(register):
    """The built-in Qwen2-VL / Qwen2.5-VL vision-tower encoder."""
    register(QwenVisionEncoder, aliases=["qwen2-vl", "qwen2.5-vl"])
