"""The synthetic spatial-relation dataset: featstore's built-in default dataset.

Each row is one rendered image of two named objects (a subject in a warm colour and a reference in a
cool one; a colour and a shape each) and a claim about them ("a red circle to the left of a blue
square"), true or false, plus optional distractor objects in neutral colours (white, black, gray).
The geometry is exact: the claim's relation holds between the two objects' bounding boxes (strict
separation along its axis, overlapping projections along the other) exactly when ``label`` is 1;
a false row shows the subject on the opposite side. Rows are balanced over relations and labels.

Determinism: row i depends only on (seed, i, size, distractors) - not on n or the worker count -
and uses only ``random.Random.random()``, whose stream Python keeps stable across versions. The
same arguments give byte-identical images and dataset files with the same Pillow build.
"""

from __future__ import annotations

import math
import multiprocessing as mp
import os

import numpy as np
from PIL import Image, ImageDraw

from .io import load_from_disk, prepare_output_folder, quiet_datasets
from .scenes import (
    COLOURS,
    DISTRACTOR_COLOURS,
    GENERATOR_VERSION,
    REFERENCE_COLOURS,
    SHAPES,
    SUBJECT_COLOURS,
    Scene,
    SceneObject,
    holds,
    plan_scene,
    row_plan,
)
from .schema import make_info, schema_features

SUPERSAMPLE = 2  # draw at 2x and downsample: anti-aliased edges at little cost
PNG_COMPRESS_LEVEL = 1  # fast zlib; images stay small since they are mostly flat colour

__all__ = [
    "COLOURS",
    "DISTRACTOR_COLOURS",
    "GENERATOR_VERSION",
    "REFERENCE_COLOURS",
    "SHAPES",
    "SUBJECT_COLOURS",
    "Scene",
    "SceneObject",
    "default_workers",
    "generate",
    "holds",
    "plan_scene",
    "render",
    "row_plan",
]


def _background_image(bg: tuple, n: int) -> Image.Image:
    """The ``n``-pixel square background: solid, a two-colour gradient, or a checkerboard."""
    kind = bg[0]
    if kind == "solid":
        return Image.new("RGB", (n, n), bg[1])
    if kind == "gradient":
        c1, c2, direction = np.array(bg[1], np.float32), np.array(bg[2], np.float32), bg[3]
        steps = 2 * n - 1 if direction == "diagonal" else n
        t = np.linspace(0.0, 1.0, steps, dtype=np.float32)[:, None]
        lut = (c1 * (1 - t) + c2 * t + 0.5).astype(np.uint8)  # one colour per step
        if direction == "vertical":
            arr = np.ascontiguousarray(np.broadcast_to(lut[:, None, :], (n, n, 3)))
        elif direction == "horizontal":
            arr = np.ascontiguousarray(np.broadcast_to(lut[None, :, :], (n, n, 3)))
        else:
            arr = lut[_diagonal_index(n)]
        return Image.fromarray(arr, "RGB")
    cell = bg[3] * SUPERSAMPLE
    k = -(-n // cell)
    small = np.where(
        ((np.arange(k)[:, None] + np.arange(k)[None, :]) % 2 == 1)[..., None],
        np.array(bg[2], np.uint8),
        np.array(bg[1], np.uint8),
    ).astype(np.uint8)
    return Image.fromarray(small, "RGB").resize((k * cell, k * cell), Image.Resampling.NEAREST).crop((0, 0, n, n))


_DIAGONAL: dict[int, np.ndarray] = {}


def _diagonal_index(n: int) -> np.ndarray:
    """row + column for an n x n grid (cached per size): the step of a diagonal gradient."""
    if n not in _DIAGONAL:
        _DIAGONAL[n] = np.add.outer(np.arange(n, dtype=np.intp), np.arange(n, dtype=np.intp))
    return _DIAGONAL[n]


def _draw_object(draw: ImageDraw.ImageDraw, obj: SceneObject, k: float) -> None:
    x0, y0, x1, y1 = (v * k for v in obj.box)
    outline = SHAPES[obj.shape]
    if outline is None:
        draw.ellipse((x0, y0, x1, y1), fill=obj.fill)
        return
    th = math.radians(obj.rotation)
    pts = [(x * math.cos(th) - y * math.sin(th), x * math.sin(th) + y * math.cos(th)) for x, y in outline]
    xs, ys = [p[0] for p in pts], [p[1] for p in pts]
    half = min((x1 - x0) / 2, (y1 - y0) / 2)
    scale = half / max(max(xs) - min(xs), max(ys) - min(ys)) * 2
    cx, cy = (x0 + x1) / 2 - (max(xs) + min(xs)) / 2 * scale, (y0 + y1) / 2 - (max(ys) + min(ys)) / 2 * scale
    draw.polygon([(cx + x * scale, cy + y * scale) for x, y in pts], fill=obj.fill)


def render(scene: Scene) -> Image.Image:
    """The RGB image of ``scene`` (``scene.size`` square), anti-aliased by supersampling."""
    n = scene.size * SUPERSAMPLE
    im = _background_image(scene.background, n)
    draw = ImageDraw.Draw(im)
    for obj in scene.distractors + (scene.reference, scene.subject):
        _draw_object(draw, obj, SUPERSAMPLE)
    return im.reduce(SUPERSAMPLE)


# ---- the dataset --------------------------------------------------------------------------------
def _render_rows(job: tuple) -> list[tuple[str, str, int, list[str]]]:
    """Worker: render rows [start, stop) into ``images_dir``; returns their dataset rows."""
    images_dir, seed, start, stop, size, distractors, width = job
    rows = []
    for i in range(start, stop):
        scene = plan_scene(seed, i, size, distractors)
        name = f"{i:0{width}d}.png"
        render(scene).save(os.path.join(images_dir, name), format="PNG", compress_level=PNG_COMPRESS_LEVEL)
        rows.append((f"images/{name}", scene.relation, scene.label, list(scene.captions)))
    return rows


def default_workers() -> int:
    """Rendering processes by default: the CPUs this process may run on."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not on Linux
        return max(1, os.cpu_count() or 1)


def generate(
    out: str | os.PathLike = "datasets/spatial_hf",
    n: int = 2000,
    seed: int = 0,
    size: int = 224,
    *,
    distractors: float = 0.5,
    workers: int | None = None,
    overwrite: bool = False,
    progress: bool = True,
):
    """Render ``n`` images into ``<out>/images/`` and save the dataset to ``out``; returns it loaded.

    ``image_path`` is stored relative to ``out`` (``images/000123.png``), so the folder can be moved.
    ``distractors`` is the probability that a row gets one or two distractor objects. ``workers``
    processes render in parallel (default: one per CPU); the result does not depend on it.
    """
    from tqdm.auto import tqdm

    import datasets

    for name, value, lo in (("n", n, 1), ("size", size, 32), ("seed", seed, None)):
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or (lo is not None and value < lo):
            raise ValueError(f"{name} must be an integer{f' >= {lo}' if lo is not None else ''}, got {value!r}")
    if size > 4096:
        raise ValueError(f"size must be at most 4096, got {size}")
    if not 0.0 <= float(distractors) <= 1.0:
        raise ValueError(f"distractors is a probability in [0, 1], got {distractors!r}")
    n, seed, size = int(n), int(seed), int(size)
    workers = default_workers() if workers is None else max(1, int(workers))
    out = prepare_output_folder(out, overwrite, owned=("images",))
    images_dir = out / "images"
    images_dir.mkdir()
    width = max(6, len(str(n - 1)))
    chunk = max(16, min(256, n // (workers * 8) or 16))
    jobs = [(str(images_dir), seed, a, min(a + chunk, n), size, float(distractors), width) for a in range(0, n, chunk)]

    columns: dict[str, list] = {"image_path": [], "spatial_relation": [], "label": [], "captions": []}
    bar = tqdm(total=n, desc=f"rendering {out}", unit="img", disable=not progress)
    try:
        if workers == 1 or len(jobs) == 1:
            results = map(_render_rows, jobs)
            _collect(results, columns, bar)
        else:
            ctx = mp.get_context("fork") if "fork" in mp.get_all_start_methods() else mp.get_context()
            with ctx.Pool(min(workers, len(jobs))) as pool:
                _collect(pool.imap(_render_rows, jobs), columns, bar)
    finally:
        bar.close()

    source = {
        "kind": "synth",
        "generator": "featstore.spatial_synth",
        "version": GENERATOR_VERSION,
        "n": n,
        "seed": seed,
        "size": size,
        "distractors": float(distractors),
    }
    ds = datasets.Dataset.from_dict(columns, features=schema_features(), info=make_info(source))
    with quiet_datasets():
        ds.save_to_disk(str(out))
    return load_from_disk(out)


def _collect(results, columns: dict[str, list], bar) -> None:
    for rows in results:
        for path, rel, label, caps in rows:
            columns["image_path"].append(path)
            columns["spatial_relation"].append(rel)
            columns["label"].append(label)
            columns["captions"].append(caps)
        bar.update(len(rows))
