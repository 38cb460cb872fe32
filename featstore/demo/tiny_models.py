"""Tiny random-init DINOv2, CLIP and Qwen2-VL / Qwen2.5-VL vision checkpoints, built locally (no downloads).

Saved with ``save_pretrained`` (about 1 MB each) with their image processors, so ``featstore extract``
and the encoder plugins load them like any local checkpoint folder. They are random-init: features
carry what a random network keeps of the image (positions, colours), not what a trained one learns.
``featstore demo`` and the tests use them.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

if TYPE_CHECKING:
    from transformers import PreTrainedConfig, PreTrainedModel

DINO_MEAN, DINO_STD = [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]


def _quiet():
    from transformers.utils import logging

    logging.set_verbosity_error()
    logging.disable_progress_bar()
    warnings.filterwarnings("ignore", message=".*torchvision.*")


def make_dinov2(folder: Path, registers: int = 0, layers: int = 4, image_size: int = 224) -> Path:
    """A DINOv2 (with ``registers`` register tokens) of width 64 and its image processor (resize to 8/7 of
    ``image_size``, centre crop ``image_size``, as DINOv2's own processor does at 224)."""
    _quiet()
    from transformers import BitImageProcessor, Dinov2Config, Dinov2Model

    torch.manual_seed(0)
    kw: dict[str, Any] = dict(
        hidden_size=64,
        num_hidden_layers=layers,
        num_attention_heads=4,
        intermediate_size=128,
        image_size=image_size,
        patch_size=14,
    )
    model: PreTrainedModel
    if registers:
        from transformers import Dinov2WithRegistersConfig, Dinov2WithRegistersModel

        model = Dinov2WithRegistersModel(Dinov2WithRegistersConfig(num_register_tokens=registers, **kw))
    else:
        model = Dinov2Model(Dinov2Config(**kw))
    model.save_pretrained(folder)
    BitImageProcessor(
        size={"shortest_edge": round(image_size * 8 / 7)},
        crop_size={"height": image_size, "width": image_size},
        do_center_crop=True,
        image_mean=DINO_MEAN,
        image_std=DINO_STD,
    ).save_pretrained(folder)
    return folder


def make_clip(folder: Path, full: bool = False, image_size: int = 224) -> Path:
    """A CLIP vision tower of width 64 for ``image_size`` images (``full``: a whole CLIPModel with a tiny text tower)."""
    _quiet()
    from transformers import (
        CLIPConfig,
        CLIPImageProcessor,
        CLIPModel,
        CLIPTextConfig,
        CLIPVisionConfig,
        CLIPVisionModel,
    )

    torch.manual_seed(1)
    vision = CLIPVisionConfig(
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=4,
        num_attention_heads=4,
        patch_size=16,
        image_size=image_size,
    )
    model: PreTrainedModel
    if full:
        text = CLIPTextConfig(
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=2,
            num_attention_heads=2,
            vocab_size=100,
            max_position_embeddings=16,
        )
        model = CLIPModel(CLIPConfig(text_config=text.to_dict(), vision_config=vision.to_dict(), projection_dim=16))
    else:
        model = CLIPVisionModel(vision)
    model.save_pretrained(folder)
    CLIPImageProcessor(
        size={"shortest_edge": image_size}, crop_size={"height": image_size, "width": image_size}
    ).save_pretrained(folder)
    return folder


def make_qwen(
    folder: Path, family: str = "qwen2-vl", layout: str = "sharded", image_size: int = 224
) -> tuple[Path, torch.nn.Module]:
    """A tiny Qwen2-VL / Qwen2.5-VL checkpoint with a fixed ``image_size`` square processor; returns (folder, tower).

    ``layout``: ``sharded`` (a full VL checkpoint, the tower under ``visual.``, two shards and an
    index, with language-model tensors beside it), ``single`` (full VL checkpoint, one file, the
    transformers-5 prefix ``model.visual.``), ``tower`` (the vision tower's own save_pretrained).
    """
    _quiet()
    import json

    from safetensors.torch import save_file
    from transformers import Qwen2VLImageProcessorPil

    torch.manual_seed(2)
    vision: PreTrainedConfig
    Full: type[PreTrainedConfig]
    Tower: type[PreTrainedModel]
    if family == "qwen2-vl":
        from transformers.models.qwen2_vl.configuration_qwen2_vl import Qwen2VLConfig, Qwen2VLVisionConfig
        from transformers.models.qwen2_vl.modeling_qwen2_vl import Qwen2VisionTransformerPretrainedModel as Tower

        vision = Qwen2VLVisionConfig(depth=4, embed_dim=64, hidden_size=96, num_heads=4, mlp_ratio=2)
        Full = Qwen2VLConfig
    else:
        from transformers.models.qwen2_5_vl.configuration_qwen2_5_vl import Qwen2_5_VLConfig, Qwen2_5_VLVisionConfig
        from transformers.models.qwen2_5_vl.modeling_qwen2_5_vl import Qwen2_5_VisionTransformerPretrainedModel as Tower

        vision = Qwen2_5_VLVisionConfig(
            depth=4,
            hidden_size=64,
            intermediate_size=128,
            num_heads=4,
            out_hidden_size=96,
            fullatt_block_indexes=[1, 3],
        )
        Full = Qwen2_5_VLConfig
    tower = Tower(vision).eval()
    folder.mkdir(parents=True, exist_ok=True)
    if layout == "tower":
        tower.save_pretrained(folder)
    else:
        text = dict(
            hidden_size=96,
            num_hidden_layers=1,
            num_attention_heads=4,
            num_key_value_heads=2,
            intermediate_size=64,
            vocab_size=100,
        )
        Full(vision_config=vision.to_dict(), text_config=text).save_pretrained(folder)
        prefix = "visual." if layout == "sharded" else "model.visual."
        weights = {f"{prefix}{k}": v.contiguous() for k, v in tower.state_dict().items()}
        lm = {"model.language_model.embed_tokens.weight": torch.randn(100, 96), "lm_head.weight": torch.randn(100, 96)}
        if layout == "sharded":
            keys = sorted(weights)
            shards = {
                "model-00001-of-00002.safetensors": {k: weights[k] for k in keys[: len(keys) // 2]},
                "model-00002-of-00002.safetensors": {**{k: weights[k] for k in keys[len(keys) // 2 :]}, **lm},
            }
            for name, tensors in shards.items():
                save_file(tensors, str(folder / name), metadata={"format": "pt"})
            index = {"metadata": {}, "weight_map": {k: name for name, tensors in shards.items() for k in tensors}}
            (folder / "model.safetensors.index.json").write_text(json.dumps(index))
        else:
            save_file({**weights, **lm}, str(folder / "model.safetensors"), metadata={"format": "pt"})
    pixels = image_size * image_size
    Qwen2VLImageProcessorPil(min_pixels=pixels, max_pixels=pixels).save_pretrained(folder)
    return folder, tower
