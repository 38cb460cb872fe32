"""Import the What'sUp benchmark (Kamath et al. 2023, "What's 'up' with vision-language models?").

Layout under ROOT, as the benchmark's repository (amitakamath/whatsup_vlms) downloads it:

========  ================================  =======================================================
subset    annotation file                   entries and images
========  ================================  =======================================================
A         controlled_images_dataset.json    ``{"image_path", "caption_options"}``; controlled_images/
B         controlled_clevr_dataset.json     the same; images in controlled_clevr/
coco-one  coco_qa_one_obj.json              ``[image_id, true_caption, false_caption]``;
coco-two  coco_qa_two_obj.json              images val2017/<id as 12 digits>.jpg
vg-one    vg_qa_one_obj.json                the same; images vg_images/<id>.jpg
vg-two    vg_qa_two_obj.json
========  ================================  =======================================================

Every caption becomes one row: the first option (A, B) or the true caption (COCO, VG) with label 1,
every other option with label 0. In A and B the true relation comes from the image file name
(``left_of``, ``right_of``, ``_on_``, ``under``, ``_in-front_of_``, ``behind``); the others are read from
the caption words. on/above map to top, under/below to bottom. Depth relations (in front of,
behind) are outside the schema's four: those rows are skipped and counted, or kept with
``keep_other`` - then the dataset's info lists front/behind as extra relations (see
:func:`featstore.spatial.dataset_relations`) and :func:`~featstore.spatial.validate` accepts them.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any

from ..schema import OTHER_RELATIONS, RELATIONS, DatasetImportError, Problem
from .base import ImportResult, RowCollector, add_skip_bad

SUBSETS: dict[str, tuple[str, str, str]] = {
    "A": ("controlled_images_dataset.json", "controlled_images", "controlled"),
    "B": ("controlled_clevr_dataset.json", "controlled_clevr", "controlled"),
    "coco-one": ("coco_qa_one_obj.json", "val2017", "coco"),
    "coco-two": ("coco_qa_two_obj.json", "val2017", "coco"),
    "vg-one": ("vg_qa_one_obj.json", "vg_images", "vg"),
    "vg-two": ("vg_qa_two_obj.json", "vg_images", "vg"),
}

# The preposition a controlled image's file name carries, e.g. "mug_left_of_plate.jpeg", "cup_on_table.jpeg".
_FILENAME_PREPOSITIONS = (
    ("left_of", "left"),
    ("right_of", "right"),
    ("_in-front_of_", "front"),
    ("_on_", "top"),
    ("_under_", "bottom"),
    ("_behind_", "behind"),
)

# Words that name a relation in a caption; "on" alone counts as top only when nothing else matches.
_CAPTION_WORDS = (
    ("left", re.compile(r"\bleft\b")),
    ("right", re.compile(r"\bright\b")),
    ("front", re.compile(r"\bin[- ]front\b|\bfront\b")),
    ("behind", re.compile(r"\bbehind\b")),
    ("bottom", re.compile(r"\b(?:under|underneath|below|beneath|bottom)\b")),
    ("top", re.compile(r"\b(?:above|over|top)\b")),
)
_ON = re.compile(r"\bon\b")


def filename_relation(image_path: str) -> str | None:
    """The relation a What'sUp A/B file name carries (``beer-bottle_on_armchair.jpeg`` -> top), or None."""
    name = "_" + Path(image_path).stem.lower() + "_"
    for marker, relation in _FILENAME_PREPOSITIONS:
        if marker in name:
            return relation
    return None


def caption_relation(caption: str) -> str | None:
    """The one relation a caption states ("A mug to the left of a plate" -> left), or None when it
    names none or several."""
    text = caption.lower()
    found = {rel for rel, pattern in _CAPTION_WORDS if pattern.search(text)}
    if not found and _ON.search(text):
        found = {"top"}
    return found.pop() if len(found) == 1 else None


def import_whatsup(
    source: str | os.PathLike,
    subset: str = "A",
    keep_other: bool = False,
    true_only: bool = False,
    skip_bad: bool = False,
) -> ImportResult:
    """Import one What'sUp subset from the folder ``source`` (ROOT); image paths are stored absolute."""
    if subset not in SUBSETS:
        raise DatasetImportError(f"unknown What'sUp subset {subset!r}; choose one of {', '.join(SUBSETS)}")
    root = Path(source)
    if not root.is_dir():
        raise DatasetImportError(
            f"What'sUp root {root} is not a folder; pass the folder that holds {SUBSETS[subset][0]}"
        )
    root = root.resolve()
    file_name, image_dir, kind = SUBSETS[subset]
    entries = _load_entries(root / file_name, subset)
    rows = RowCollector(file_name, "entry")
    allowed = RELATIONS + (OTHER_RELATIONS if keep_other else ())
    for pos, entry in enumerate(entries):
        parsed, problems = (_controlled_entry if kind == "controlled" else _qa_entry)(
            entry, pos, root, image_dir, kind, rows
        )
        kept = []
        for image, relation, label, caption in parsed:
            if true_only and label == 0:
                rows.skipped["false captions (--true-only)"] += 1
            elif relation not in allowed:
                rows.skipped[
                    "depth relations in front of/behind are not in the schema (pass --keep-other to keep them)"
                ] += 1
            else:
                kept.append((image, relation, label, [caption]))
        rows.add_entry(kept, problems)
    info = {
        "kind": "whatsup",
        "subset": subset,
        "file": file_name,
        "root": str(root),
        "keep_other": keep_other,
        "true_only": true_only,
    }
    return rows.finish(skip_bad, info, OTHER_RELATIONS if keep_other else ())


def _add_arguments(parser) -> None:
    parser.add_argument("--subset", required=True, choices=list(SUBSETS), help="which What'sUp file to import")
    parser.add_argument(
        "--keep-other",
        action="store_true",
        help="keep in-front-of/behind rows (the dataset then lists front, behind as extra relations)",
    )
    parser.add_argument("--true-only", action="store_true", help="one row per image: only the true caption")
    add_skip_bad(parser)


import_whatsup.add_arguments = _add_arguments  # type: ignore[attr-defined]


def _load_entries(path: Path, subset: str) -> list:
    if not path.is_file():
        raise DatasetImportError(
            f"{path} does not exist; subset {subset} needs ROOT/{SUBSETS[subset][0]} and its "
            f"images under ROOT/{SUBSETS[subset][1]}/ (see datasets/README.md)"
        )
    try:
        with open(path, encoding="utf-8") as f:
            entries = json.load(f)
    except ValueError as exc:
        line = getattr(exc, "lineno", "?")
        raise DatasetImportError(f"{path} is not valid JSON (line {line}): {exc}; restore the original file") from None
    if not isinstance(entries, list):
        raise DatasetImportError(
            f"{path} holds a JSON {type(entries).__name__}; What'sUp files are JSON lists of entries"
        )
    return entries


def _find_image(root: Path, image_dir: str, stored: str) -> tuple[Path | None, list[Path]]:
    """The image an A/B entry names: ROOT/<image_path>, else ROOT/<image dir>/<its file name>."""
    p = Path(stored)
    candidates = [p if p.is_absolute() else root / p, root / image_dir / p.name]
    for c in dict.fromkeys(candidates):
        if c.is_file():
            return c, candidates
    return None, candidates


def _controlled_entry(entry: Any, pos: int, root: Path, image_dir: str, kind: str, rows: RowCollector):
    if not isinstance(entry, dict):
        return [], [
            rows.problem(
                pos, None, f"is a JSON {type(entry).__name__}; expected an object with image_path and caption_options"
            )
        ]
    problems: list[Problem] = []
    image_path, options = entry.get("image_path"), entry.get("caption_options")
    if not isinstance(image_path, str) or not image_path.strip():
        problems.append(rows.problem(pos, "image_path", f"is {image_path!r}; expected the image's path"))
    if not isinstance(options, list) or len(options) < 2 or not all(isinstance(c, str) and c.strip() for c in options):
        problems.append(
            rows.problem(
                pos,
                "caption_options",
                f"is {_short(options)}; expected a list of two or more captions, the true one first",
            )
        )
    if problems:
        return [], problems
    assert isinstance(image_path, str) and isinstance(options, list)  # else a problem was recorded above
    true_relation = filename_relation(image_path)
    if true_relation is None:
        problems.append(
            rows.problem(
                pos,
                "image_path",
                f"file name {Path(image_path).name!r} carries no preposition "
                "(left_of, right_of, _on_, _under_, _in-front_of_, _behind_)",
            )
        )
    image, tried = _find_image(root, image_dir, image_path)
    if image is None:
        problems.append(
            rows.problem(
                pos,
                "image_path",
                f"image not found (tried {', '.join(map(str, dict.fromkeys(tried)))}); "
                f"unpack the images into ROOT/{image_dir}/",
            )
        )
    parsed = []
    for k, caption in enumerate(options):
        relation = caption_relation(caption)
        if k == 0 and true_relation is not None:
            if relation is not None and relation != true_relation:
                problems.append(
                    rows.problem(
                        pos,
                        "caption_options",
                        f"caption 0 {caption!r} says {relation} but the file "
                        f"name says {true_relation}; the first caption must be the true one",
                    )
                )
            relation = true_relation
        elif relation is None and k > 0:  # (caption 0 without a file-name preposition is reported above)
            problems.append(rows.problem(pos, "caption_options", f"caption {k} {caption!r} names no single relation"))
        parsed.append((str(image), relation, 1 if k == 0 else 0, caption.strip()))
    return (parsed, []) if not problems else ([], problems)


def _qa_entry(entry: Any, pos: int, root: Path, image_dir: str, kind: str, rows: RowCollector):
    if not isinstance(entry, list) or len(entry) != 3:
        return [], [rows.problem(pos, None, f"is {_short(entry)}; expected [image_id, true_caption, false_caption]")]
    image_id, true_caption, false_caption = entry
    problems: list[Problem] = []
    if isinstance(image_id, bool) or not (
        isinstance(image_id, int) or (isinstance(image_id, str) and image_id.strip().isdigit())
    ):
        problems.append(rows.problem(pos, "image_id", f"is {image_id!r}; expected the image's numeric id"))
    for name, caption in (("true_caption", true_caption), ("false_caption", false_caption)):
        if not isinstance(caption, str) or not caption.strip():
            problems.append(rows.problem(pos, name, f"is {caption!r}; expected a caption string"))
    if problems:
        return [], problems
    number = int(str(image_id).strip())
    image = root / image_dir / (f"{number:012d}.jpg" if kind == "coco" else f"{number}.jpg")
    if not image.is_file():
        problems.append(
            rows.problem(pos, "image_id", f"image {image} does not exist; unpack the images into ROOT/{image_dir}/")
        )
    parsed = []
    for name, caption, label in (("true_caption", true_caption, 1), ("false_caption", false_caption, 0)):
        relation = caption_relation(caption)
        if relation is None:
            problems.append(
                rows.problem(
                    pos,
                    name,
                    f"{caption!r} names no single relation (left, right, above/on, below/under, in front of, behind)",
                )
            )
        parsed.append((str(image), relation, label, caption.strip()))
    return (parsed, []) if not problems else ([], problems)


def _short(value: Any, limit: int = 80) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."
