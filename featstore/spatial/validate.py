"""Validation of a spatial dataset against the schema: every problem of every row, reported at once."""

from __future__ import annotations

import os
from collections import Counter
from typing import Any

from .schema import (
    OTHER_RELATIONS,
    REQUIRED_COLUMNS,
    DatasetValidationError,
    Problem,
    check_is_dataset,
    dataset_relations,
    dataset_root,
    normalize_relation,
    resolve_image_path,
    table,
)


def validate(
    ds,
    root: str | os.PathLike | None = None,
    check_files: bool = True,
    decode: bool = False,
    progress: bool = False,
) -> dict[str, Any]:
    """Check every row of ``ds`` against the schema and raise :class:`DatasetValidationError` listing
    every problem at once (missing columns, unknown relations, labels outside {0, 1}, empty captions,
    missing image files). Relative image paths resolve against ``root`` (default: the folder ``ds``
    was loaded from, else the cwd). With ``decode`` every image file is decoded too (a truncated or
    unreadable image is a problem), with a progress bar on stderr if ``progress``. Returns a summary:
    rows, images, counts per relation and label."""
    check_is_dataset(ds)
    problems: list[Problem] = []
    columns = set(ds.column_names)
    for name in REQUIRED_COLUMNS:
        if name not in columns:
            problems.append(
                Problem(
                    None, name, f"column is missing; a spatial dataset needs the columns {', '.join(REQUIRED_COLUMNS)}"
                )
            )
    rows = table(ds.select_columns([c for c in REQUIRED_COLUMNS if c in columns]))
    problems += _check_column_types(ds, columns)
    allowed = dataset_relations(ds)
    root = root if root is not None else dataset_root(ds)
    summary: dict[str, Any] = {"rows": len(ds), "images": 0, "relations": {}, "labels": {}}

    if "image_path" in columns:
        paths = rows.column("image_path").to_pylist()
        seen: dict[str, str | None] = {}
        bar = _progress(len(paths), progress and check_files and decode)
        for i, p in enumerate(paths):
            bar.update(1)
            if not isinstance(p, str) or not p.strip():
                problems.append(
                    Problem(
                        i,
                        "image_path",
                        f"is {p!r}; give the image file's path (absolute, or relative to the dataset folder)",
                    )
                )
                continue
            if p not in seen:
                seen[p] = image_problem(resolve_image_path(p, root), root, decode) if check_files else None
            if seen[p]:
                problems.append(Problem(i, "image_path", str(seen[p])))
        bar.close()
        summary["images"] = len(seen)
    if "spatial_relation" in columns:
        rels = rows.column("spatial_relation").to_pylist()
        for i, r in enumerate(rels):
            if r not in allowed:
                hint = normalize_relation(r)
                fix = f"write {hint!r} instead" if hint in allowed else f"use one of {', '.join(allowed)}"
                if hint in OTHER_RELATIONS:
                    fix += " (depth relations are kept only by importers asked to, e.g. --keep-other)"
                problems.append(Problem(i, "spatial_relation", f"unknown relation {r!r}; {fix}"))
        summary["relations"] = dict(sorted(Counter(r for r in rels if r in allowed).items()))
    if "label" in columns:
        labels = rows.column("label").to_pylist()
        for i, v in enumerate(labels):
            if isinstance(v, bool) or v not in (0, 1):
                problems.append(
                    Problem(
                        i, "label", f"is {v!r}, not 0 or 1; use 1 when the captions are true of the image, 0 when false"
                    )
                )
        summary["labels"] = {
            str(k): v for k, v in sorted(Counter(v for v in labels if v in (0, 1) and not isinstance(v, bool)).items())
        }
    if "captions" in columns:
        for i, caps in enumerate(rows.column("captions").to_pylist()):
            if not isinstance(caps, list):
                problems.append(Problem(i, "captions", f"is {caps!r}; give a list of one or more caption strings"))
            elif not caps:
                problems.append(
                    Problem(i, "captions", "is an empty list; give at least one caption stating the relation")
                )
            else:
                for j, c in enumerate(caps):
                    if not isinstance(c, str) or not c.strip():
                        problems.append(Problem(i, "captions", f"caption {j} is {c!r}; remove it or write the caption"))
    if problems:
        order: dict[str | None, int] = {name: k for k, name in enumerate(REQUIRED_COLUMNS)}  # field None sorts last
        problems.sort(key=lambda p: (-1 if p.row is None else p.row, order.get(p.field, len(order))))
        raise DatasetValidationError(f"dataset with {len(ds)} rows has {len(problems)} problem(s):", problems)
    return summary


def image_problem(path, root, decode: bool) -> str | None:
    """What is wrong with the image file ``path`` (missing; with ``decode``, not decodable), or None."""
    if not path.is_file():
        return (
            f"image file {path} does not exist; fix the path (relative paths resolve against "
            f"{root or 'the current directory'}) or restore the file"
        )
    if decode:
        from PIL import Image

        try:
            with Image.open(path) as im:
                im.load()
        except Exception as exc:
            return f"image file {path} cannot be decoded ({exc}); replace the file or remove the row"
    return None


def _progress(total: int, enabled: bool) -> Any:
    import sys

    from tqdm.auto import tqdm

    return tqdm(total=total, unit="row", desc="validate", disable=not enabled, file=sys.stderr)


def _check_column_types(ds, columns: set[str]) -> list[Problem]:
    """Column-level type problems (a caption column of plain strings, a float label column...)."""
    import datasets

    out = []
    feats = ds.features
    if "label" in columns:
        f = feats["label"]
        dtype = getattr(f, "dtype", None)
        if not isinstance(f, datasets.ClassLabel) and (
            dtype is None or not (dtype.startswith("int") or dtype.startswith("uint"))
        ):
            out.append(
                Problem(
                    None, "label", f"column type is {f}; cast it: ds = ds.cast_column('label', datasets.Value('int64'))"
                )
            )
    list_types = tuple(t for t in (getattr(datasets, n, None) for n in ("Sequence", "List", "LargeList")) if t) + (
        list,
    )
    if "captions" in columns and not isinstance(feats["captions"], list_types):
        out.append(
            Problem(
                None,
                "captions",
                f"column type is {feats['captions']}, not a list of strings; "
                "wrap each caption: ds = ds.map(lambda r: {'captions': [r['captions']]})",
            )
        )
    return out
