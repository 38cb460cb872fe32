"""An example featstore encoder plugin: ``patchcolor``, the mean colour of each image patch.

It needs no model weights, so it runs anywhere; it exists to show a plugin author every piece an
encoder has (see README.md beside pyproject.toml). The "model" argument names the patch size:
``patch16`` (the default grid of 14 x 14 patches over a 224-pixel image) or ``patch32``.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from featstore.encoders import Encoder, LayerTokens
from featstore.errors import ModelLoadError
from featstore.hookspecs import hookimpl

IMAGE_SIZE = 224


class PatchColorEncoder(Encoder):
    """Mean RGB of each patch (layer ``color``) and its deviation from the image's mean (``contrast``)."""

    name = "patchcolor"

    @property
    def patch_size(self) -> int:
        match = re.fullmatch(r"patch(\d+)", self.model_id)
        if not match or IMAGE_SIZE % int(match.group(1)):
            raise ModelLoadError(
                f"patchcolor: model must be 'patchN' with N dividing {IMAGE_SIZE} (e.g. patch16), got {self.model_id!r}"
            )
        return int(match.group(1))

    def load_config(self) -> dict[str, Any]:
        return {"patch_size": self.patch_size, "image_size": IMAGE_SIZE, "hidden_size": 3}

    @property
    def feature_size(self) -> int:
        return 3

    def list_layers(self) -> list[str]:
        return ["color", "contrast"]

    def load_model(self) -> torch.nn.Module:
        return torch.nn.AvgPool2d(self.patch_size)  # "weights": none; the pooling is the whole model

    def load_processor(self):
        return _Processor(IMAGE_SIZE)

    def encode(self, model, inputs, layers: Sequence[str]) -> dict[str, LayerTokens]:
        pooled = model(inputs["pixel_values"])  # (B, 3, h, w)
        h, w = pooled.shape[2:]
        patches = pooled.flatten(2).transpose(1, 2)  # (B, h*w, 3), raster order
        image_mean = patches.mean(1, keepdim=True)  # a "CLS" token: the whole image's colour
        out = {}
        for layer in layers:
            tokens = patches if layer == "color" else patches - image_mean
            prefix = image_mean if layer == "color" else torch.zeros_like(image_mean)
            out[layer] = LayerTokens(prefix, tokens, (h, w))
        return out

    def provenance(self) -> dict[str, Any]:
        """No weight files to hash: the settings are the whole model."""
        return {
            "encoder": self.name,
            "model": self.model_id,
            "dtype": str(self.dtype).replace("torch.", ""),
            "preprocessing": {"image_size": IMAGE_SIZE, "resample": "bilinear", "scale": "0..1"},
        }


class _Processor:
    """PIL images -> {"pixel_values": (B, 3, size, size) floats in [0, 1]}."""

    def __init__(self, size: int):
        self.size = size

    def __call__(self, images, return_tensors="pt"):
        from PIL import Image

        arrays = [
            np.asarray(im.convert("RGB").resize((self.size, self.size), Image.BILINEAR), dtype=np.float32) / 255.0
            for im in images
        ]
        return {"pixel_values": torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).contiguous()}


@hookimpl
def register_encoders(register):
    """Register the example encoder (also reachable as ``patch-color``)."""
    register(PatchColorEncoder, aliases=["patch-color"])
