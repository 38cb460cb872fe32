"""CLIP's vision tower through ``transformers``, from a CLIPVisionModel folder or a full CLIP
checkpoint: layers ``layer_0`` (embeddings after the pre-layernorm) to ``layer_L``, plus
``last_layer`` (the tower's ``last_hidden_state``). Prefix token: CLS."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from featstore.encoders import Encoder, LayerTokens
from featstore.hookspecs import hookimpl

from ._hf import load_checked, load_image_processor, patch_grid


class CLIPEncoder(Encoder):
    """CLIP ViT vision tower (openai/clip-vit-*), all blocks."""

    name = "clip"

    def load_config(self) -> Any:
        from transformers import AutoConfig

        config = AutoConfig.from_pretrained(str(self.model_folder()))
        return getattr(config, "vision_config", config)  # a full CLIP checkpoint holds the tower's config

    def list_layers(self) -> list[str]:
        return [f"layer_{i}" for i in range(self.config.num_hidden_layers + 1)] + ["last_layer"]

    def load_model(self) -> torch.nn.Module:
        from transformers import CLIPVisionModel

        return load_checked(CLIPVisionModel, str(self.model_folder()))

    def load_processor(self) -> Any:
        return load_image_processor(str(self.model_folder()))

    def encode(self, model, inputs, layers: Sequence[str]) -> dict[str, LayerTokens]:
        out = model(pixel_values=inputs["pixel_values"], output_hidden_states=True)
        grid = patch_grid(inputs["pixel_values"], self.config.patch_size)
        result = {}
        for layer in layers:
            h = out.last_hidden_state if layer == "last_layer" else out.hidden_states[int(layer.split("_")[1])]
            result[layer] = LayerTokens(h[:, :1], h[:, 1:], grid)
        return result


@hookimpl
def register_encoders(register):
    """The built-in CLIP encoder."""
    register(CLIPEncoder)
