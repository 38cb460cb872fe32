"""Test helpers: the tiny random-init encoders (now in featstore.demo.tiny_models), random images, a small saved dataset, offline hub."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from featstore.demo.tiny_models import DINO_MEAN, DINO_STD, _quiet, make_clip, make_dinov2, make_qwen  # noqa: F401


def random_images(n: int, seed: int = 0, size=(240, 200)):
    """``n`` random RGB PIL images."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    return [Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)) for _ in range(n)]


def make_dataset(
    folder: Path, n_images: int = 10, repeats: tuple[int, ...] = (0, 3), size=(64, 48), seed: int = 0
) -> Path:
    """A saved spatial dataset of ``n_images`` random PNG images; the images at ``repeats`` appear in a
    second row too (rows sharing an image), so rows > images. Returns the dataset folder."""
    import datasets
    from featstore.spatial import save_to_disk, schema_features

    images = folder / "images"
    images.mkdir(parents=True)
    paths = []
    for i, im in enumerate(random_images(n_images, seed=seed, size=size)):
        im.save(images / f"{i:04d}.png")
        paths.append(str(images / f"{i:04d}.png"))
    order = list(range(n_images)) + list(repeats)
    rels = ["left", "right", "top", "bottom"]
    rows = {
        "image_path": [paths[j] for j in order],
        "spatial_relation": [rels[k % 4] for k in range(len(order))],
        "label": [k % 2 for k in range(len(order))],
        "captions": [[f"caption {k}"] for k in range(len(order))],
    }
    ds = datasets.Dataset.from_dict(rows, features=schema_features())
    out = folder / "dataset"
    save_to_disk(ds, out)
    return out


def offline_hub():
    """A context manager: HF hub offline for the code inside (environment and huggingface_hub's
    constant, which it reads only when first imported, perhaps before the test set the variable)."""
    import contextlib
    import os

    @contextlib.contextmanager
    def cm():
        import huggingface_hub.constants as constants

        old_env, old_const = os.environ.get("HF_HUB_OFFLINE"), constants.HF_HUB_OFFLINE
        os.environ["HF_HUB_OFFLINE"] = "1"
        constants.HF_HUB_OFFLINE = True
        try:
            yield
        finally:
            constants.HF_HUB_OFFLINE = old_const
            if old_env is None:
                os.environ.pop("HF_HUB_OFFLINE", None)
            else:
                os.environ["HF_HUB_OFFLINE"] = old_env

    return cm()
