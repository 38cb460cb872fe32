"""DINOv2 (and DINOv2 with registers) through ``transformers``: layers ``layer_0`` (embeddings) to
``layer_L`` (block L's output), plus ``last`` (after the final layernorm, the model's
``last_hidden_state``). Prefix tokens: CLS, then the register tokens."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from featstore.encoders import Encoder, LayerTokens
from featstore.hookspecs import hookimpl

from ._hf import load_checked, load_image_processor, patch_grid


class DINOv2Encoder(Encoder):
    """DINOv2 ViT (facebook/dinov2-*), all blocks and the final layernorm."""

    name = "dinov2"

    def load_config(self) -> Any:
        from transformers import AutoConfig

        return AutoConfig.from_pretrained(str(self.model_folder()))

    def list_layers(self) -> list[str]:
        return [f"layer_{i}" for i in range(self.config.num_hidden_layers + 1)] + ["last"]

    def load_model(self) -> torch.nn.Module:
        from transformers import AutoModel

        return load_checked(AutoModel, str(self.model_folder()))

    def load_processor(self) -> Any:
        return load_image_processor(str(self.model_folder()))

    def encode(self, model, inputs, layers: Sequence[str]) -> dict[str, LayerTokens]:
        out = model(pixel_values=inputs["pixel_values"], output_hidden_states=True)
        grid = patch_grid(inputs["pixel_values"], self.config.patch_size)
        n_prefix = 1 + int(getattr(self.config, "num_register_tokens", 0) or 0)
        result = {}
        for layer in layers:
            h = out.last_hidden_state if layer == "last" else out.hidden_states[int(layer.split("_")[1])]
            result[layer] = LayerTokens(h[:, :n_prefix], h[:, n_prefix:], grid)
        return result


@hookimpl
def register_encoders(register):
    """The built-in DINOv2 encoder."""
    register(DINOv2Encoder)
