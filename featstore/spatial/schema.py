"""The spatial-relation dataset schema: columns, relations, the meaning of ``label``, the dataset's
featstore info, image paths and column access.

A spatial dataset is a HuggingFace ``datasets.Dataset`` with one row per (image, claim):

======================  ===============  ============================================================
column                  type             meaning
======================  ===============  ============================================================
``image_path``          string           the image file: absolute, or relative to the dataset folder
``spatial_relation``    string           the relation the captions state: left, right, top or bottom
``label``               int64, 0 or 1    1 when the captions are true of the image, 0 when false
``captions``            list of strings  one or more phrasings of the same claim (at least one)
``features``            optional         per-row features (see :func:`with_features`)
======================  ===============  ============================================================

``label`` (:data:`LABEL_MEANING`): 1 when ``spatial_relation`` holds from the first object the
captions name (the subject) to the second (the reference), seen from the viewer, and 0 when it does
not. Captions naming one object ("a dog on the left") use the image frame as the reference.

``datasets`` is imported inside functions only: ``import featstore`` and the plugin manager must
work on machines without it.
"""

from __future__ import annotations

import json
import os
import re
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import FeatureStoreError

RELATIONS: tuple[str, ...] = ("left", "right", "top", "bottom")
"""The four relations of the schema, in the order used for integer relation codes."""

OTHER_RELATIONS: tuple[str, ...] = ("front", "behind")
"""Depth relations some benchmarks use; allowed only in datasets whose info lists them as extra."""

OPPOSITE: dict[str, str] = {
    "left": "right",
    "right": "left",
    "top": "bottom",
    "bottom": "top",
    "front": "behind",
    "behind": "front",
}

REQUIRED_COLUMNS: tuple[str, ...] = ("image_path", "spatial_relation", "label", "captions")
FEATURES_COLUMN = "features"
ROW_INDEX_COLUMN = "row_index"
"""Added by :func:`split` and :func:`with_features`: the row's position in the full dataset, which is
also its row in every feature set extracted from that dataset."""

LABEL_MEANING = (
    "1 when spatial_relation holds from the first object the captions name (the subject) to the second "
    "(the reference), seen from the viewer; 0 when it does not. One-object captions use the image frame "
    "as the reference."
)

INFO_KEY = "featstore_spatial"
SCHEMA_VERSION = 1

# Words and phrases mapped onto the schema's relations (and the two depth relations).
RELATION_SYNONYMS: dict[str, str] = {
    "left": "left",
    "left of": "left",
    "to the left of": "left",
    "left_of": "left",
    "on the left": "left",
    "right": "right",
    "right of": "right",
    "to the right of": "right",
    "right_of": "right",
    "on the right": "right",
    "top": "top",
    "above": "top",
    "on": "top",
    "on top of": "top",
    "over": "top",
    "on the top": "top",
    "bottom": "bottom",
    "below": "bottom",
    "under": "bottom",
    "beneath": "bottom",
    "underneath": "bottom",
    "on the bottom": "bottom",
    "front": "front",
    "in front of": "front",
    "in-front": "front",
    "in-front of": "front",
    "in-front_of": "front",
    "behind": "behind",
}


def normalize_relation(text: Any) -> str | None:
    """The schema relation a word or phrase names ("above" -> "top", "Left of" -> "left"), or None."""
    if not isinstance(text, str):
        return None
    key = re.sub(r"\s+", " ", text.strip().lower())
    return RELATION_SYNONYMS.get(key)


# ---- errors -------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Problem:
    """One bad value: where it is (row or file position), which field, and what to do about it."""

    row: int | None
    field: str | None
    message: str
    source: str | None = None
    unit: str = "row"  # "row" (dataset row, 0-based), "entry" (JSON list index, 0-based), "line" (1-based)

    def __str__(self) -> str:
        where = [self.source] if self.source else []
        if self.row is not None:
            where.append(f"{self.unit} {self.row}")
        if self.field:
            where.append(f"field {self.field!r}")
        return (", ".join(where) + ": " if where else "") + self.message


class SpatialDatasetError(FeatureStoreError):
    """A spatial dataset, its source files or its pairing with a feature set is wrong; see ``.problems``."""

    def __init__(self, message: str, problems: Iterable[Problem] = ()):
        self.problems: list[Problem] = list(problems)
        super().__init__(_with_problem_list(message, self.problems))


class DatasetValidationError(SpatialDatasetError):
    """:func:`validate` found bad rows or columns; every one is listed in ``.problems``."""


class DatasetImportError(SpatialDatasetError):
    """An importer found malformed entries or missing images; each is listed with its position in the file."""


class DatasetAlignmentError(SpatialDatasetError):
    """A dataset and a feature set do not belong together (row counts or labels disagree)."""


def _with_problem_list(message: str, problems: list[Problem], shown: int = 50) -> str:
    if not problems:
        return message
    lines = [message] + [f"  {p}" for p in problems[:shown]]
    if len(problems) > shown:
        per_field = Counter(p.field or "(dataset)" for p in problems)
        lines.append(f"  ... and {len(problems) - shown} more (all in .problems; per field: {dict(per_field)})")
    return "\n".join(lines)


# ---- dataset info: provenance and allowed relations ---------------------------------------------
def make_info(source: dict[str, Any], extra_relations: Iterable[str] = ()):
    """A ``datasets.DatasetInfo`` whose description records featstore's schema version, the dataset's
    source (generator parameters or importer), and any relations allowed beyond the four."""
    import datasets

    extra = [r for r in OTHER_RELATIONS if r in set(extra_relations)]
    meta = {
        INFO_KEY: {
            "schema_version": SCHEMA_VERSION,
            "relations": list(RELATIONS) + extra,
            "extra_relations": extra,
            "label": LABEL_MEANING,
            "image_path": "absolute, or relative to the dataset folder",
            "source": source,
        }
    }
    return datasets.DatasetInfo(description=json.dumps(meta, sort_keys=True), features=schema_features())


def schema_features():
    """The ``datasets.Features`` of the four schema columns (string, string, int64, list of strings)."""
    import datasets

    list_type = getattr(datasets, "List", None) or datasets.Sequence
    return datasets.Features(
        {
            "image_path": datasets.Value("string"),
            "spatial_relation": datasets.Value("string"),
            "label": datasets.Value("int64"),
            "captions": list_type(datasets.Value("string")),
        }
    )


def dataset_meta(ds) -> dict[str, Any]:
    """featstore's record from the dataset's info (schema version, source, relations), or {} if none."""
    text = getattr(getattr(ds, "info", None), "description", "") or ""
    try:
        meta = json.loads(text)
    except ValueError:
        return {}
    return meta.get(INFO_KEY, {}) if isinstance(meta, dict) else {}


def dataset_relations(ds) -> tuple[str, ...]:
    """The relations allowed in ``ds``: the four, plus front/behind if its info lists them as extra."""
    extra = dataset_meta(ds).get("extra_relations") or []
    return RELATIONS + tuple(r for r in OTHER_RELATIONS if r in extra)


# ---- image paths --------------------------------------------------------------------------------
def dataset_root(ds) -> Path | None:
    """The folder ``ds`` was loaded from (relative image paths resolve against it), or None if in memory."""
    for entry in getattr(ds, "cache_files", None) or []:
        name = entry.get("filename")
        if name:
            return Path(name).resolve().parent
    return None


def resolve_image_path(image_path: str, root: str | os.PathLike | None) -> Path:
    """``image_path`` as an absolute path: as is when absolute, else joined to ``root`` (or the cwd)."""
    p = Path(image_path)
    if p.is_absolute():
        return p
    return (Path(root) if root is not None else Path.cwd()).resolve() / p


def image_paths(ds, root: str | os.PathLike | None = None) -> list[Path]:
    """Every row's image as an absolute path; ``root`` defaults to :func:`dataset_root`."""
    root = root if root is not None else dataset_root(ds)
    return [resolve_image_path(p, root) for p in column_values(ds, "image_path")]


# ---- reading columns ----------------------------------------------------------------------------
def table(ds):
    """The rows of ``ds`` as a pyarrow Table, honouring selections and ignoring any format/transform."""
    return ds.with_format("arrow")[:]


def column_values(ds, name: str) -> list:
    """The values of column ``name`` of ``ds`` as a Python list (selections honoured)."""
    return table(ds.select_columns([name])).column(name).to_pylist()


def check_is_dataset(ds, what: str = "ds") -> None:
    """Raise TypeError, saying what to pass instead, unless ``ds`` is one ``datasets.Dataset``."""
    import datasets

    if isinstance(ds, datasets.DatasetDict):
        raise TypeError(f"{what} is a DatasetDict with splits {list(ds)}; pass one split, e.g. {what}['train']")
    if not isinstance(ds, datasets.Dataset):
        raise TypeError(f"{what} must be a datasets.Dataset, got {type(ds).__name__}")
