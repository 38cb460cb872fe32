"""Small helpers the built-in encoders share for ``transformers`` models."""

from __future__ import annotations

import warnings
from typing import Any

import torch


def load_image_processor(folder: str) -> Any:
    """``AutoImageProcessor.from_pretrained(folder)``, without the warning about torchvision-backed
    fast processors (featstore uses the PIL-backed ones, which need no torchvision)."""
    from transformers import AutoImageProcessor
    from transformers.utils import logging

    level = logging.get_verbosity()
    logging.set_verbosity_error()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return AutoImageProcessor.from_pretrained(folder)
    finally:
        logging.set_verbosity(level)


def load_checked(cls: Any, folder: str, **kwargs) -> Any:
    """``cls.from_pretrained(folder)`` (progress bars and info logs off) that fails unless every weight
    of the model was found in the checkpoint with the right shape. Extra tensors are fine (a CLIP
    vision tower loaded from a whole CLIP checkpoint leaves the text tower's out)."""
    from transformers.utils import logging

    from featstore.errors import ModelLoadError

    level = logging.get_verbosity()
    logging.set_verbosity_error()
    logging.disable_progress_bar()
    try:
        model, info = cls.from_pretrained(folder, output_loading_info=True, **kwargs)
    finally:
        logging.enable_progress_bar()
        logging.set_verbosity(level)
    missing = sorted(info.get("missing_keys") or [])
    mismatched = list(info.get("mismatched_keys") or [])
    if missing or mismatched:
        raise ModelLoadError(
            f"{folder}: {len(missing)} weight(s) of {type(model).__name__} are missing from the checkpoint "
            f"(e.g. {missing[:3]}) and {len(mismatched)} have the wrong shape (e.g. {mismatched[:3]}); "
            "they would be left random. Is the checkpoint complete and of this model family?"
        )
    return model


def patch_grid(pixel_values: torch.Tensor, patch_size: int) -> tuple[int, int]:
    """(h, w) patches of a ``(B, C, H, W)`` batch cut into ``patch_size`` squares."""
    return pixel_values.shape[-2] // patch_size, pixel_values.shape[-1] // patch_size
