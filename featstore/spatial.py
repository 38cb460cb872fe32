"""The spatial-relation dataset schema: columns, the meaning of ``label``, validation, load and save.

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
import shutil
from collections import Counter
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable

from .errors import FeatureStoreError

RELATIONS: tuple[str, ...] = ("left", "right", "top", "bottom")
"""The four relations of the schema, in the order used for integer relation codes."""

OTHER_RELATIONS: tuple[str, ...] = ("front", "behind")
"""Depth relations some benchmarks use; allowed only in datasets whose info lists them as extra."""

OPPOSITE: dict[str, str] = {"left": "right", "right": "left", "top": "bottom", "bottom": "top",
                            "front": "behind", "behind": "front"}

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
    "left": "left", "left of": "left", "to the left of": "left", "left_of": "left", "on the left": "left",
    "right": "right", "right of": "right", "to the right of": "right", "right_of": "right", "on the right": "right",
    "top": "top", "above": "top", "on": "top", "on top of": "top", "over": "top", "on the top": "top",
    "bottom": "bottom", "below": "bottom", "under": "bottom", "beneath": "bottom", "underneath": "bottom",
    "on the bottom": "bottom",
    "front": "front", "in front of": "front", "in-front": "front", "in-front of": "front", "in-front_of": "front",
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
    return datasets.Features({"image_path": datasets.Value("string"), "spatial_relation": datasets.Value("string"),
                              "label": datasets.Value("int64"), "captions": list_type(datasets.Value("string"))})


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
    return [resolve_image_path(p, root) for p in _column(ds, "image_path")]


# ---- reading columns ----------------------------------------------------------------------------
def _table(ds):
    """The rows of ``ds`` as a pyarrow Table, honouring selections and ignoring any format/transform."""
    return ds.with_format("arrow")[:]


def _column(ds, name: str) -> list:
    return _table(ds.select_columns([name])).column(name).to_pylist()


def _check_is_dataset(ds, what: str = "ds") -> None:
    import datasets

    if isinstance(ds, datasets.DatasetDict):
        raise TypeError(f"{what} is a DatasetDict with splits {list(ds)}; pass one split, e.g. {what}['train']")
    if not isinstance(ds, datasets.Dataset):
        raise TypeError(f"{what} must be a datasets.Dataset, got {type(ds).__name__}")


# ---- validation ---------------------------------------------------------------------------------
def validate(ds, root: str | os.PathLike | None = None, check_files: bool = True) -> dict[str, Any]:
    """Check every row of ``ds`` against the schema and raise :class:`DatasetValidationError` listing
    every problem at once (missing columns, unknown relations, labels outside {0, 1}, empty captions,
    missing image files). Relative image paths resolve against ``root`` (default: the folder ``ds``
    was loaded from, else the cwd). Returns a summary: rows, images, counts per relation and label."""
    _check_is_dataset(ds)
    problems: list[Problem] = []
    columns = set(ds.column_names)
    for name in REQUIRED_COLUMNS:
        if name not in columns:
            problems.append(Problem(None, name, f"column is missing; a spatial dataset needs the columns {', '.join(REQUIRED_COLUMNS)}"))
    table = _table(ds.select_columns([c for c in REQUIRED_COLUMNS if c in columns]))
    problems += _check_column_types(ds, columns)
    allowed = dataset_relations(ds)
    root = root if root is not None else dataset_root(ds)
    summary: dict[str, Any] = {"rows": len(ds), "images": 0, "relations": {}, "labels": {}}

    if "image_path" in columns:
        paths = table.column("image_path").to_pylist()
        seen: dict[str, bool] = {}
        for i, p in enumerate(paths):
            if not isinstance(p, str) or not p.strip():
                problems.append(Problem(i, "image_path", f"is {p!r}; give the image file's path (absolute, or relative to the dataset folder)"))
                continue
            if p not in seen:
                seen[p] = not check_files or resolve_image_path(p, root).is_file()
            if not seen[p]:
                problems.append(Problem(i, "image_path", f"image file {resolve_image_path(p, root)} does not exist; "
                                        f"fix the path (relative paths resolve against {root or 'the current directory'}) or restore the file"))
        summary["images"] = len(seen)
    if "spatial_relation" in columns:
        rels = table.column("spatial_relation").to_pylist()
        for i, r in enumerate(rels):
            if r not in allowed:
                hint = normalize_relation(r)
                fix = f"write {hint!r} instead" if hint in allowed else f"use one of {', '.join(allowed)}"
                if hint in OTHER_RELATIONS:
                    fix += " (depth relations are kept only by importers asked to, e.g. --keep-other)"
                problems.append(Problem(i, "spatial_relation", f"unknown relation {r!r}; {fix}"))
        summary["relations"] = dict(sorted(Counter(r for r in rels if r in allowed).items()))
    if "label" in columns:
        labels = table.column("label").to_pylist()
        for i, v in enumerate(labels):
            if isinstance(v, bool) or v not in (0, 1):
                problems.append(Problem(i, "label", f"is {v!r}, not 0 or 1; use 1 when the captions are true of the image, 0 when false"))
        summary["labels"] = {str(k): v for k, v in sorted(Counter(v for v in labels if v in (0, 1) and not isinstance(v, bool)).items())}
    if "captions" in columns:
        for i, caps in enumerate(table.column("captions").to_pylist()):
            if not isinstance(caps, list):
                problems.append(Problem(i, "captions", f"is {caps!r}; give a list of one or more caption strings"))
            elif not caps:
                problems.append(Problem(i, "captions", "is an empty list; give at least one caption stating the relation"))
            else:
                for j, c in enumerate(caps):
                    if not isinstance(c, str) or not c.strip():
                        problems.append(Problem(i, "captions", f"caption {j} is {c!r}; remove it or write the caption"))
    if problems:
        order = {name: k for k, name in enumerate(REQUIRED_COLUMNS)}
        problems.sort(key=lambda p: (-1 if p.row is None else p.row, order.get(p.field, len(order))))
        raise DatasetValidationError(f"dataset with {len(ds)} rows has {len(problems)} problem(s):", problems)
    return summary


def _check_column_types(ds, columns: set[str]) -> list[Problem]:
    """Column-level type problems (a caption column of plain strings, a float label column...)."""
    import datasets

    out = []
    feats = ds.features
    if "label" in columns:
        f = feats["label"]
        dtype = getattr(f, "dtype", None)
        if not isinstance(f, datasets.ClassLabel) and (dtype is None or not (dtype.startswith("int") or dtype.startswith("uint"))):
            out.append(Problem(None, "label", f"column type is {f}; cast it: ds = ds.cast_column('label', datasets.Value('int64'))"))
    list_types = tuple(t for t in (getattr(datasets, n, None) for n in ("Sequence", "List", "LargeList")) if t) + (list,)
    if "captions" in columns and not isinstance(feats["captions"], list_types):
        out.append(Problem(None, "captions", f"column type is {feats['captions']}, not a list of strings; "
                           "wrap each caption: ds = ds.map(lambda r: {'captions': [r['captions']]})"))
    return out


# ---- loading and saving -------------------------------------------------------------------------
@contextmanager
def quiet_datasets():
    """Silence HF datasets' own progress bars inside featstore operations (they have their own)."""
    import datasets

    was_enabled = (not datasets.are_progress_bars_disabled()) if hasattr(datasets, "are_progress_bars_disabled") \
        else datasets.is_progress_bar_enabled()
    datasets.disable_progress_bars()
    try:
        yield
    finally:
        if was_enabled:
            datasets.enable_progress_bars()


def load_from_disk(path: str | os.PathLike, validate_rows: bool = False, check_files: bool = True):
    """``datasets.load_from_disk(path)`` with a clear error when ``path`` is not a saved dataset;
    with ``validate_rows=True`` also :func:`validate` it (a DatasetDict split by split)."""
    import datasets

    path = Path(path)
    if not path.is_dir():
        raise SpatialDatasetError(f"{path} is not a folder; make a dataset first, e.g. "
                                  f"featstore dataset synth --out {path}")
    if not ((path / "dataset_info.json").exists() or (path / "dataset_dict.json").exists()):
        raise SpatialDatasetError(f"{path} holds no saved dataset (no dataset_info.json or dataset_dict.json); "
                                  "pass the folder given to save_to_disk")
    ds = datasets.load_from_disk(str(path))
    if validate_rows:
        for name, part in (ds.items() if isinstance(ds, datasets.DatasetDict) else [(None, ds)]):
            try:
                validate(part, check_files=check_files)
            except DatasetValidationError as exc:
                where = f"{path}" + (f" split {name!r}" if name else "")
                raise DatasetValidationError(f"{where}: {len(exc.problems)} problem(s):", exc.problems) from None
    return ds


_DATASET_FILES = re.compile(r"^(data-\d+-of-\d+\.arrow|cache-[0-9a-f]+\.arrow|dataset_info\.json|state\.json|dataset_dict\.json)$")


def prepare_output_folder(path: str | os.PathLike, overwrite: bool, owned: Iterable[str] = ()) -> Path:
    """Make ``path`` ready to receive a dataset. A dataset saved there before is an error unless
    ``overwrite``; then its files (and the folders in ``owned``, e.g. the generator's ``images``) are
    removed. Files featstore did not write are never deleted."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise SpatialDatasetError(f"{path} exists and is not a folder; choose another output folder")
    if path.is_dir():
        entries = list(path.iterdir())
        ours = [e for e in entries if _DATASET_FILES.match(e.name) or _is_split_folder(e)]
        owned_here = [e for e in entries if e.name in set(owned)]
        if ours and not overwrite:
            raise SpatialDatasetError(f"{path} already holds a dataset; choose a new folder or pass --overwrite (overwrite=True)")
        if owned_here and not ours:
            raise SpatialDatasetError(f"{path} holds {', '.join(e.name for e in owned_here)}/ but no dataset, so featstore "
                                      "did not write it; choose an empty or new folder")
        if overwrite:
            for e in ours + owned_here:
                shutil.rmtree(e) if e.is_dir() else e.unlink()
    path.mkdir(parents=True, exist_ok=True)
    return path


def _is_split_folder(entry: Path) -> bool:
    return entry.is_dir() and any(entry.iterdir()) and all(_DATASET_FILES.match(f.name) for f in entry.iterdir())


def save_to_disk(ds, path: str | os.PathLike, overwrite: bool = False) -> Path:
    """``ds.save_to_disk(path)`` (a Dataset or DatasetDict) that keeps relative image paths valid: when
    ``ds`` was loaded from another folder they are rewritten relative to the new one (per split)."""
    import datasets

    path = Path(path)
    sources = [dataset_root(d) for d in (ds.values() if isinstance(ds, datasets.DatasetDict) else [ds])]
    if any(s is not None and (s == path.resolve() or path.resolve() in s.parents) for s in sources):
        raise SpatialDatasetError(f"cannot save a dataset into {path}, the folder it is read from (or one above it); "
                                  "save it to a new folder")
    prepare_output_folder(path, overwrite)
    with quiet_datasets():
        if isinstance(ds, datasets.DatasetDict):
            ds = datasets.DatasetDict({name: _rebase(part, path / name) for name, part in ds.items()})
        else:
            ds = _rebase(ds, path)
        ds.save_to_disk(str(path))
    return path


def _rebase(ds, new_root: Path):
    """``ds`` with relative image paths rewritten from the folder it was loaded from to ``new_root``."""
    old_root = dataset_root(ds)
    if old_root is None or "image_path" not in ds.column_names:
        return ds
    new_root = new_root.resolve()
    if old_root == new_root:
        return ds

    def rebase(batch):
        return {"image_path": [p if not isinstance(p, str) or os.path.isabs(p) or not p
                               else os.path.relpath(old_root / p, new_root) for p in batch["image_path"]]}

    return ds.with_format(None).map(rebase, batched=True, keep_in_memory=True)


# The split and the join back live in their own modules; they are part of this public face.
from .spatial_join import RowTargets, row_targets, with_features  # noqa: E402
from .spatial_split import SPLITS, split, split_indices  # noqa: E402

__all__ = [
    "DatasetAlignmentError", "DatasetImportError", "DatasetValidationError", "FEATURES_COLUMN", "LABEL_MEANING",
    "OPPOSITE", "OTHER_RELATIONS", "Problem", "RELATIONS", "RELATION_SYNONYMS", "REQUIRED_COLUMNS",
    "ROW_INDEX_COLUMN", "RowTargets", "SPLITS", "SpatialDatasetError", "dataset_meta", "dataset_relations",
    "dataset_root", "image_paths", "load_from_disk", "make_info", "normalize_relation", "prepare_output_folder",
    "resolve_image_path", "row_targets", "save_to_disk", "schema_features", "split", "split_indices", "validate", "with_features",
]
