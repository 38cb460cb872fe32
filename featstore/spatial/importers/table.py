"""Import a spatial dataset from a CSV or JSONL file of the schema's columns and a folder of images.

Each record has ``image_path`` (relative to the images folder, or absolute), ``spatial_relation``
(left/right/top/bottom or a synonym such as "above", "left of", "under"), ``label`` (0/1, also
"true"/"false") and ``captions`` (a JSON list of strings, or one caption as a plain string). Every
bad record is reported with its line number; nothing is imported unless all are good, or
``skip_bad`` leaves the bad ones out. Stored image paths are absolute.
"""

from __future__ import annotations

import csv
import json
import os
from pathlib import Path
from typing import Any

from ..schema import RELATIONS, REQUIRED_COLUMNS, DatasetImportError, Problem, normalize_relation
from .base import ImportResult, RowCollector, add_skip_bad

FORMATS = ("csv", "jsonl")


def import_table(
    source: str | os.PathLike,
    images: str | os.PathLike | None = None,
    format: str | None = None,
    skip_bad: bool = False,
) -> ImportResult:
    """Import ``source`` (a .csv or .jsonl file); relative image paths resolve against ``images``
    (default: the file's folder)."""
    path = Path(source)
    fmt = (format or path.suffix.lstrip(".")).lower()
    if fmt not in FORMATS:
        raise DatasetImportError(f"{path}: cannot tell the format from the name; pass --format csv or --format jsonl")
    if not path.is_file():
        raise DatasetImportError(f"{path} does not exist or is not a file; pass the CSV or JSONL file to import")
    image_root = Path(images) if images is not None else path.parent
    if not image_root.is_dir():
        raise DatasetImportError(
            f"images folder {image_root} does not exist; pass --images DIR (the folder image_path is relative to)"
        )
    image_root = image_root.resolve()
    rows = RowCollector(str(path), "line")
    records = _read_jsonl(path, rows) if fmt == "jsonl" else _read_csv(path)
    ignored: set[str] = set()
    for line, record in records:
        ignored |= {k for k in record if k is not None} - set(REQUIRED_COLUMNS)
        row, problems = _parse(record, line, image_root, rows)
        rows.add_entry([row] if row else [], problems)
    result = rows.finish(skip_bad, {"kind": "table", "file": str(path.resolve()), "images": str(image_root)})
    if ignored:
        result.remarks.append(f"ignored column(s) not in the schema: {', '.join(sorted(ignored))}")
    return result


def _add_arguments(parser) -> None:
    parser.add_argument(
        "--images", default=None, help="folder that relative image paths start from (default: the file's folder)"
    )
    parser.add_argument("--format", choices=FORMATS, default=None, help="default: from the file name (.csv or .jsonl)")
    add_skip_bad(parser)


import_table.add_arguments = _add_arguments  # type: ignore[attr-defined]


def _read_csv(path: Path):
    with open(path, newline="", encoding="utf-8-sig") as f:
        reader = csv.DictReader(f)
        missing = [c for c in REQUIRED_COLUMNS if c not in (reader.fieldnames or [])]
        if missing:
            raise DatasetImportError(
                f"{path}: the header lacks column(s) {', '.join(missing)}; the first line must name "
                f"the columns {', '.join(REQUIRED_COLUMNS)} (found {reader.fieldnames})"
            )
        for record in reader:
            yield reader.line_num, record


def _read_jsonl(path: Path, rows: RowCollector):
    with open(path, encoding="utf-8") as f:
        for line_no, text in enumerate(f, start=1):
            if not text.strip():
                continue
            try:
                record = json.loads(text)
            except ValueError as exc:  # a JSONDecodeError, or e.g. an integer too long for int()
                detail = f"{exc.msg} at column {exc.colno}" if isinstance(exc, json.JSONDecodeError) else str(exc)[:120]
                rows.add_entry(
                    [],
                    [
                        rows.problem(
                            line_no,
                            None,
                            f"is not valid JSON ({detail}); write one JSON object per line",
                        )
                    ],
                )
                continue
            if not isinstance(record, dict):
                rows.add_entry(
                    [],
                    [
                        rows.problem(
                            line_no,
                            None,
                            f"is a JSON {type(record).__name__}, not an object with "
                            f"the keys {', '.join(REQUIRED_COLUMNS)}",
                        )
                    ],
                )
                continue
            yield line_no, record


def _parse(record: dict[str | None, Any], line: int, image_root: Path, rows: RowCollector):
    problems: list[Problem] = []
    if None in record:  # csv.DictReader puts surplus fields under the key None
        problems.append(
            rows.problem(
                line, None, f"has {len(record[None])} more field(s) than the header; quote values that contain commas"
            )
        )
        record = {k: v for k, v in record.items() if k is not None}
    for name in REQUIRED_COLUMNS:
        if name not in record or record[name] is None:
            problems.append(rows.problem(line, name, "is missing; every record needs " + ", ".join(REQUIRED_COLUMNS)))
    if problems:
        return None, problems

    image = record["image_path"]
    resolved = None
    if not isinstance(image, str) or not image.strip():
        problems.append(rows.problem(line, "image_path", f"is {image!r}; give the image file's path"))
    else:
        resolved = (image_root / image.strip()) if not os.path.isabs(image.strip()) else Path(image.strip())
        if not resolved.is_file():
            problems.append(
                rows.problem(
                    line,
                    "image_path",
                    f"image file {resolved} does not exist; fix the path "
                    f"(relative paths start at {image_root}, see --images) or add the file",
                )
            )

    relation = normalize_relation(record["spatial_relation"])
    if relation not in RELATIONS:
        problems.append(
            rows.problem(
                line,
                "spatial_relation",
                f"{record['spatial_relation']!r} is not one of "
                f"{', '.join(RELATIONS)} (or a synonym such as 'above', 'left of', 'under')",
            )
        )

    label = _label(record["label"])
    if label is None:
        problems.append(
            rows.problem(
                line,
                "label",
                f"is {record['label']!r}; use 1 when the captions are true of the image and 0 when they are false",
            )
        )

    captions, why = _captions(record["captions"])
    if why:
        problems.append(rows.problem(line, "captions", why))
    if problems:
        return None, problems
    return (str(resolved), relation, label, captions), []


def _label(value: Any) -> int | None:
    if isinstance(value, bool):
        return int(value)
    if isinstance(value, int) and value in (0, 1):
        return value
    if isinstance(value, str):
        return {"0": 0, "1": 1, "false": 0, "true": 1}.get(value.strip().lower())
    return None


def _captions(value: Any) -> tuple[list[str], str | None]:
    if isinstance(value, str):
        text = value.strip()
        if text.startswith("["):
            try:
                value = json.loads(text)
            except ValueError as exc:  # a JSONDecodeError, or e.g. an integer too long for int()
                detail = exc.msg if isinstance(exc, json.JSONDecodeError) else str(exc)[:120]
                return (
                    [],
                    f'looks like a JSON list but does not parse ({detail}); write ["caption one", "caption two"]',
                )
        else:
            return ([text], None) if text else ([], "is empty; give at least one caption")
    if not isinstance(value, list):
        return [], f"is {type(value).__name__}; give a list of caption strings"
    if not value:
        return [], "is an empty list; give at least one caption"
    bad = [i for i, c in enumerate(value) if not isinstance(c, str) or not c.strip()]
    if bad:
        return [], f"caption(s) {bad} are empty or not strings"
    return [c.strip() for c in value], None
