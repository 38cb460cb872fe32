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

import hashlib
import math
import multiprocessing as mp
import os
import random
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw

from .io import load_from_disk, prepare_output_folder, quiet_datasets
from .schema import OPPOSITE, RELATIONS, make_info, schema_features

GENERATOR_VERSION = 2
SUPERSAMPLE = 2  # draw at 2x and downsample: anti-aliased edges at little cost
PNG_COMPRESS_LEVEL = 1  # fast zlib; images stay small since they are mostly flat colour

COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (220, 38, 38), "orange": (245, 135, 20), "yellow": (240, 205, 30),
    "cyan": (30, 190, 200), "blue": (35, 75, 215),
    "white": (245, 245, 245), "black": (25, 25, 25), "gray": (125, 125, 125),
}
# Colours by role, so the image alone tells which object a claim names first (What'sUp does the same by
# fixing the subject of each object pair): subjects warm, references cool, distractors neutral. The
# warm/cool split is one linear direction of RGB that the grey-toned backgrounds hardly move, so even a
# linear probe on a random network's patch features can find the two objects (issue 5's sanity check).
SUBJECT_COLOURS = ("red", "orange", "yellow")
REFERENCE_COLOURS = ("cyan", "blue")
DISTRACTOR_COLOURS = ("white", "black", "gray")

# Unit outlines in [-1, 1]^2 (y down); circles are drawn as ellipses.
_STAR = [(math.cos(math.radians(-90 + 36 * k)) * (1 if k % 2 == 0 else 0.45),
          math.sin(math.radians(-90 + 36 * k)) * (1 if k % 2 == 0 else 0.45)) for k in range(10)]
_ARM = 0.36
SHAPES: dict[str, list[tuple[float, float]] | None] = {
    "circle": None,
    "square": [(-1, -1), (1, -1), (1, 1), (-1, 1)],
    "triangle": [(math.cos(math.radians(a)), math.sin(math.radians(a))) for a in (-90, 30, 150)],
    "diamond": [(0, -1), (0.7, 0), (0, 1), (-0.7, 0)],
    "star": _STAR,
    "pentagon": [(math.cos(math.radians(-90 + 72 * k)), math.sin(math.radians(-90 + 72 * k))) for k in range(5)],
    "hexagon": [(math.cos(math.radians(60 * k)), math.sin(math.radians(60 * k))) for k in range(6)],
    "cross": [(-_ARM, -1), (_ARM, -1), (_ARM, -_ARM), (1, -_ARM), (1, _ARM), (_ARM, _ARM), (_ARM, 1),
              (-_ARM, 1), (-_ARM, _ARM), (-1, _ARM), (-1, -_ARM), (-_ARM, -_ARM)],
}

TEMPLATES: dict[str, tuple[str, ...]] = {
    "left": ("{a} to the left of {b}", "{the_a} is to the left of {the_b}", "{a} on the left side of {b}",
             "{the_a} is left of {the_b}"),
    "right": ("{a} to the right of {b}", "{the_a} is to the right of {the_b}", "{a} on the right side of {b}",
              "{the_a} is right of {the_b}"),
    "top": ("{a} above {b}", "{the_a} is above {the_b}", "{the_a} sits higher than {the_b}", "{a} located above {b}"),
    "bottom": ("{a} below {b}", "{the_a} is below {the_b}", "{the_a} sits lower than {the_b}", "{a} beneath {b}"),
}
CAPTIONS_PER_ROW = 3

# Geometry, as fractions of the image size.
MARGIN, MIN_GAP = 0.03, 0.05
OBJECT_SIZE = (0.14, 0.30)
DISTRACTOR_SIZE = (0.08, 0.16)
MAX_ORTHOGONAL_OFFSET = 0.3  # of the smaller object: projections on the other axis overlap well
MIN_COLOUR_DISTANCE = 110.0  # RGB distance between an object colour and the background


@dataclass(frozen=True)
class SceneObject:
    """One drawn object: its name parts, fill, rotation and bounding box (x0, y0, x1, y1) in pixels."""

    shape: str
    colour: str
    fill: tuple[int, int, int]
    rotation: float
    box: tuple[float, float, float, float]

    @property
    def name(self) -> str:
        return f"{self.colour} {self.shape}"


@dataclass(frozen=True)
class Scene:
    """Everything about row ``index``: the claim, its truth, the objects and the background."""

    index: int
    size: int
    relation: str
    label: int
    subject: SceneObject
    reference: SceneObject
    distractors: tuple[SceneObject, ...]
    background: tuple
    captions: tuple[str, ...]


def holds(relation: str, a: Sequence[float], b: Sequence[float]) -> bool:
    """Whether box ``a`` is strictly ``relation`` of box ``b`` (x0, y0, x1, y1; y grows downwards)."""
    if relation == "left":
        return a[2] < b[0]
    if relation == "right":
        return a[0] > b[2]
    if relation == "top":
        return a[3] < b[1]
    if relation == "bottom":
        return a[1] > b[3]
    raise ValueError(f"unknown relation {relation!r}")


# ---- seeded randomness --------------------------------------------------------------------------
def _rng(seed: int, *parts) -> random.Random:
    digest = hashlib.sha256(":".join(map(str, (GENERATOR_VERSION, seed) + parts)).encode()).digest()
    return random.Random(int.from_bytes(digest[:8], "little"))


def _uniform(r: random.Random, lo: float, hi: float) -> float:
    return lo + (hi - lo) * r.random()


def _pick(r: random.Random, seq):
    return seq[min(int(r.random() * len(seq)), len(seq) - 1)]


def _shuffled(r: random.Random, seq) -> list:
    out = list(seq)
    for i in range(len(out) - 1, 0, -1):  # Fisher-Yates on random() only
        j = min(int(r.random() * (i + 1)), i)
        out[i], out[j] = out[j], out[i]
    return out


def row_plan(seed: int, index: int) -> tuple[str, int]:
    """The (relation, label) of row ``index``: every block of 8 rows holds each pair once, ordered so
    that any prefix is balanced over relations and over labels to within one row."""
    block, pos = divmod(index, 8)
    r = _rng(seed, "block", block)
    relations = _shuffled(r, RELATIONS)
    first = 1 if r.random() < 0.5 else 0
    rel = relations[pos % 4]
    label = (first + pos) % 2 if pos < 4 else 1 - (first + pos - 4) % 2
    return rel, label


# ---- scene planning -----------------------------------------------------------------------------
def _article(word: str) -> str:
    return "an" if word[0] in "aeiou" else "a"


def _channel(v: float) -> int:
    return int(min(255, max(0, v)))


def _jitter(r: random.Random, rgb) -> tuple[int, int, int]:
    """A named colour's shade, varied by up to 12 per channel."""
    return (_channel(rgb[0] + _uniform(r, -12, 12)), _channel(rgb[1] + _uniform(r, -12, 12)),
            _channel(rgb[2] + _uniform(r, -12, 12)))


def _background(r: random.Random, avoid: list[tuple[int, int, int]]) -> tuple | None:
    """A solid, gradient or low-contrast checker background far in colour from every object in ``avoid``."""

    def tone():
        for _ in range(200):
            grey = _uniform(r, 20, 235)
            c = (_channel(grey + _uniform(r, -35, 35)), _channel(grey + _uniform(r, -35, 35)),
                 _channel(grey + _uniform(r, -35, 35)))
            if all(math.dist(c, a) >= MIN_COLOUR_DISTANCE for a in avoid):
                return c
        return None

    kind = _pick(r, ("solid", "solid", "gradient", "checker"))
    c1 = tone()
    if c1 is None:  # no tone far enough from these colours: the caller picks other objects
        return None
    if kind == "solid":
        return ("solid", c1)
    if kind == "gradient":
        c2 = tone() or c1
        mid = tuple((a + b) / 2 for a, b in zip(c1, c2))
        if any(math.dist(mid, a) < MIN_COLOUR_DISTANCE for a in avoid):
            c2 = c1
        return ("gradient", c1, c2, _pick(r, ("vertical", "horizontal", "diagonal")))
    shift = _uniform(r, 10, 22) * (1 if sum(c1) < 384 else -1)
    c2 = tuple(_channel(v + shift) for v in c1)
    return ("checker", c1, c2, int(_uniform(r, 14, 48)))


def _place_pair(r: random.Random, actual: str, S: int) -> tuple[tuple, tuple]:
    """Boxes (subject, reference) with the subject strictly ``actual`` of the reference."""
    m, gmin = MARGIN * S, MIN_GAP * S
    for _ in range(1000):
        sa, sb = (_uniform(r, *OBJECT_SIZE) * S for _ in range(2))
        slack = S - 2 * m - sa - sb - gmin
        if slack <= 0:
            continue
        gap = gmin + _uniform(r, 0, slack)
        first_pos = m + _uniform(r, 0, slack - (gap - gmin))
        subject_first = actual in ("left", "top")
        s_first = sa if subject_first else sb
        p_first, p_second = first_pos, first_pos + s_first + gap
        pa, pb = (p_first, p_second) if subject_first else (p_second, p_first)
        cb = _uniform(r, m + sb / 2, S - m - sb / 2)
        ca = cb + _uniform(r, -1, 1) * MAX_ORTHOGONAL_OFFSET * min(sa, sb)
        ca = min(max(ca, m + sa / 2), S - m - sa / 2)
        if abs(ca - cb) > MAX_ORTHOGONAL_OFFSET * min(sa, sb) + 1e-9:
            continue
        if actual in ("left", "right"):
            box_a = (pa, ca - sa / 2, pa + sa, ca + sa / 2)
            box_b = (pb, cb - sb / 2, pb + sb, cb + sb / 2)
        else:
            box_a = (ca - sa / 2, pa, ca + sa / 2, pa + sa)
            box_b = (cb - sb / 2, pb, cb + sb / 2, pb + sb)
        return box_a, box_b
    raise RuntimeError("could not place two objects; the image size is too small")  # unreachable for size >= 32


def _boxes_clear(box, others, pad: float) -> bool:
    """Whether ``box`` keeps at least ``pad`` pixels from every box in ``others``."""
    return all(box[2] + pad < o[0] or o[2] + pad < box[0] or box[3] + pad < o[1] or o[3] + pad < box[1] for o in others)


def plan_scene(seed: int, index: int, size: int = 224, distractors: float = 0.5) -> Scene:
    """The scene of row ``index``: a pure function of its arguments (no drawing)."""
    relation, label = row_plan(seed, index)
    r = _rng(seed, "row", index)
    actual = relation if label == 1 else OPPOSITE[relation]
    shapes = list(SHAPES)
    background = None
    while background is None:  # almost always one pass: a background far from both colours exists
        sa, sb = _pick(r, shapes), _pick(r, shapes)
        ca, cb = _pick(r, SUBJECT_COLOURS), _pick(r, REFERENCE_COLOURS)
        fa, fb = _jitter(r, COLOURS[ca]), _jitter(r, COLOURS[cb])
        background = _background(r, [fa, fb])
    box_a, box_b = _place_pair(r, actual, size)
    subject = SceneObject(sa, ca, fa, _rotation(r, sa), box_a)
    reference = SceneObject(sb, cb, fb, _rotation(r, sb), box_b)

    extras: list[SceneObject] = []
    if r.random() < distractors:
        count = 1 if r.random() < 0.5 else 2
        bg_colours = [c for c in background[1:] if isinstance(c, tuple)]
        for _ in range(count * 30):
            if len(extras) == count:
                break
            shape, colour = _pick(r, shapes), _pick(r, DISTRACTOR_COLOURS)
            fill = _jitter(r, COLOURS[colour])
            s = _uniform(r, *DISTRACTOR_SIZE) * size
            x0, y0 = _uniform(r, MARGIN * size, size - MARGIN * size - s), _uniform(r, MARGIN * size, size - MARGIN * size - s)
            box = (x0, y0, x0 + s, y0 + s)
            rotation = _rotation(r, shape)
            if any(math.dist(fill, c) < MIN_COLOUR_DISTANCE for c in bg_colours):
                continue
            if not _boxes_clear(box, [box_a, box_b] + [e.box for e in extras], 0.02 * size):
                continue
            extras.append(SceneObject(shape, colour, fill, rotation, box))

    return Scene(index, size, relation, label, subject, reference, tuple(extras), background,
                 _captions(r, relation, subject, reference))


def _rotation(r: random.Random, shape: str) -> float:
    """A slight tilt (degrees) so outlines vary; small enough that a square never reads as a diamond."""
    return 0.0 if shape == "circle" else _uniform(r, -12, 12)


def _captions(r: random.Random, relation: str, a: SceneObject, b: SceneObject) -> tuple[str, ...]:
    names = {"a": f"{_article(a.colour)} {a.name}", "b": f"{_article(b.colour)} {b.name}",
             "the_a": f"the {a.name}", "the_b": f"the {b.name}"}
    first, *others = TEMPLATES[relation]
    chosen = [first] + _shuffled(r, others)[: CAPTIONS_PER_ROW - 1]
    return tuple(t.format(**names) for t in chosen)


# ---- drawing ------------------------------------------------------------------------------------
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
    small = np.where(((np.arange(k)[:, None] + np.arange(k)[None, :]) % 2 == 1)[..., None],
                     np.array(bg[2], np.uint8), np.array(bg[1], np.uint8)).astype(np.uint8)
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


def generate(out: str | os.PathLike = "datasets/spatial_hf", n: int = 2000, seed: int = 0, size: int = 224, *,
             distractors: float = 0.5, workers: int | None = None, overwrite: bool = False, progress: bool = True):
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

    source = {"kind": "synth", "generator": "featstore.spatial_synth", "version": GENERATOR_VERSION,
              "n": n, "seed": seed, "size": size, "distractors": float(distractors)}
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
