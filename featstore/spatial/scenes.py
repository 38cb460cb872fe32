"""Scenes of the synthetic dataset, planned before anything is drawn: two named objects (a warm
subject, a cool reference), their exact geometry for the claimed relation, optional neutral
distractors, the background and the captions. See :mod:`featstore.spatial.synth` for the dataset.

Row i depends only on (seed, i, size, distractors) and uses only ``random.Random.random()``.
"""

from __future__ import annotations

import hashlib
import math
import random
from collections.abc import Sequence
from dataclasses import dataclass

from .schema import OPPOSITE, RELATIONS

GENERATOR_VERSION = 2

COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (220, 38, 38),
    "orange": (245, 135, 20),
    "yellow": (240, 205, 30),
    "cyan": (30, 190, 200),
    "blue": (35, 75, 215),
    "white": (245, 245, 245),
    "black": (25, 25, 25),
    "gray": (125, 125, 125),
}
# Colours by role, so the image alone tells which object a claim names first (What'sUp does the same by
# fixing the subject of each object pair): subjects warm, references cool, distractors neutral. The
# warm/cool split is one linear direction of RGB that the grey-toned backgrounds hardly move, so even a
# linear probe on a random network's patch features can find the two objects (issue 5's sanity check).
SUBJECT_COLOURS = ("red", "orange", "yellow")
REFERENCE_COLOURS = ("cyan", "blue")
DISTRACTOR_COLOURS = ("white", "black", "gray")

# Unit outlines in [-1, 1]^2 (y down); circles are drawn as ellipses.
_STAR = [
    (
        math.cos(math.radians(-90 + 36 * k)) * (1 if k % 2 == 0 else 0.45),
        math.sin(math.radians(-90 + 36 * k)) * (1 if k % 2 == 0 else 0.45),
    )
    for k in range(10)
]
_ARM = 0.36
SHAPES: dict[str, list[tuple[float, float]] | None] = {
    "circle": None,
    "square": [(-1, -1), (1, -1), (1, 1), (-1, 1)],
    "triangle": [(math.cos(math.radians(a)), math.sin(math.radians(a))) for a in (-90, 30, 150)],
    "diamond": [(0, -1), (0.7, 0), (0, 1), (-0.7, 0)],
    "star": _STAR,
    "pentagon": [(math.cos(math.radians(-90 + 72 * k)), math.sin(math.radians(-90 + 72 * k))) for k in range(5)],
    "hexagon": [(math.cos(math.radians(60 * k)), math.sin(math.radians(60 * k))) for k in range(6)],
    "cross": [
        (-_ARM, -1),
        (_ARM, -1),
        (_ARM, -_ARM),
        (1, -_ARM),
        (1, _ARM),
        (_ARM, _ARM),
        (_ARM, 1),
        (-_ARM, 1),
        (-_ARM, _ARM),
        (-1, _ARM),
        (-1, -_ARM),
        (-_ARM, -_ARM),
    ],
}

TEMPLATES: dict[str, tuple[str, ...]] = {
    "left": (
        "{a} to the left of {b}",
        "{the_a} is to the left of {the_b}",
        "{a} on the left side of {b}",
        "{the_a} is left of {the_b}",
    ),
    "right": (
        "{a} to the right of {b}",
        "{the_a} is to the right of {the_b}",
        "{a} on the right side of {b}",
        "{the_a} is right of {the_b}",
    ),
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
    return (
        _channel(rgb[0] + _uniform(r, -12, 12)),
        _channel(rgb[1] + _uniform(r, -12, 12)),
        _channel(rgb[2] + _uniform(r, -12, 12)),
    )


def _background(r: random.Random, avoid: list[tuple[int, int, int]]) -> tuple | None:
    """A solid, gradient or low-contrast checker background far in colour from every object in ``avoid``."""

    def tone():
        for _ in range(200):
            grey = _uniform(r, 20, 235)
            c = (
                _channel(grey + _uniform(r, -35, 35)),
                _channel(grey + _uniform(r, -35, 35)),
                _channel(grey + _uniform(r, -35, 35)),
            )
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


def boxes_clear(box, others, pad: float) -> bool:
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
            x0, y0 = (
                _uniform(r, MARGIN * size, size - MARGIN * size - s),
                _uniform(r, MARGIN * size, size - MARGIN * size - s),
            )
            box = (x0, y0, x0 + s, y0 + s)
            rotation = _rotation(r, shape)
            if any(math.dist(fill, c) < MIN_COLOUR_DISTANCE for c in bg_colours):
                continue
            if not boxes_clear(box, [box_a, box_b] + [e.box for e in extras], 0.02 * size):
                continue
            extras.append(SceneObject(shape, colour, fill, rotation, box))

    return Scene(
        index,
        size,
        relation,
        label,
        subject,
        reference,
        tuple(extras),
        background,
        captions(r, relation, subject, reference),
    )


def _rotation(r: random.Random, shape: str) -> float:
    """A slight tilt (degrees) so outlines vary; small enough that a square never reads as a diamond."""
    return 0.0 if shape == "circle" else _uniform(r, -12, 12)


def captions(r: random.Random, relation: str, a: SceneObject, b: SceneObject) -> tuple[str, ...]:
    names = {
        "a": f"{_article(a.colour)} {a.name}",
        "b": f"{_article(b.colour)} {b.name}",
        "the_a": f"the {a.name}",
        "the_b": f"the {b.name}",
    }
    first, *others = TEMPLATES[relation]
    chosen = [first] + _shuffled(r, others)[: CAPTIONS_PER_ROW - 1]
    return tuple(t.format(**names) for t in chosen)


# ---- drawing ------------------------------------------------------------------------------------
