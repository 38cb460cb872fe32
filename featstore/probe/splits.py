"""The split a probe run used, as ``split.json``: the task, the train/validation/test row numbers and
each row's target, so a run can be repeated and any other tool scored on exactly the same rows;
:func:`load_split` reads one back (``--split-file``) and checks it fits the dataset and task."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from .tasks import TaskData

SPLITS = ("train", "validation", "test")


def split_record(t: TaskData, rows: dict[str, np.ndarray], n_rows: int, **how: Any) -> dict[str, Any]:
    """The JSON-able split: task, classes, dataset size, how it was made, rows and targets per split."""
    return {
        "task": t.name,
        "classes": list(t.classes),
        "relations": list(t.relations),
        "n_dataset_rows": int(n_rows),
        **how,
        "rows": {s: [int(i) for i in rows[s]] for s in SPLITS},
        "targets": {s: [int(v) for v in t.target[rows[s]]] for s in SPLITS},
    }


def load_split(path, t: TaskData, n_rows: int) -> dict[str, np.ndarray]:
    """The rows of each split from a ``split.json``, checked against this dataset and task: the same task,
    rows in range, no row in two splits, and every row's target the one recorded."""
    path = Path(path)
    try:
        rec = json.loads(path.read_text())
        rows = {s: np.asarray(rec["rows"][s], dtype=np.int64) for s in SPLITS}
        targets = {s: np.asarray(rec["targets"][s], dtype=np.int64) for s in SPLITS}
        task = rec["task"]
    except FileNotFoundError:
        raise
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise ValueError(f"{path} is not a split file written by featstore probe ({exc})") from None
    if task != t.name:
        raise ValueError(f"{path} is a split for task {task!r}, not {t.name!r}")
    seen = np.concatenate(list(rows.values()))
    if len(seen) and (seen.min() < 0 or seen.max() >= n_rows):
        raise ValueError(f"{path} names rows outside this dataset's {n_rows} rows: made on another dataset?")
    if len(np.unique(seen)) != len(seen):
        raise ValueError(f"{path} puts a row in two splits (or twice in one)")
    for s in SPLITS:
        if len(rows[s]) == 0:
            raise ValueError(f"{path}: the {s} split has no rows")
        if len(targets[s]) != len(rows[s]) or not np.array_equal(t.target[rows[s]], targets[s]):
            raise ValueError(
                f"{path}: the {s} rows' targets differ from this dataset's for task {t.name!r}: made on another dataset?"
            )
    return rows
