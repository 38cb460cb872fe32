"""Probe tasks: what a task makes of a spatial dataset (the rows it uses, each row's class and
relation), and the split by image into train, validation and test rows.

Tasks: ``relation`` (which relation holds, on the rows whose label is 1), ``binary`` (does the
row's relation hold; one output per relation, the row's relation picks the one it is scored on) or
the name of any integer column of the dataset (its distinct values are the classes).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..spatial import column_values, row_targets, split_indices

TASKS = ("relation", "binary")


@dataclass
class TaskData:
    """What a task makes of a dataset: the rows it uses, each row's class, and its relation code."""

    name: str
    rows: np.ndarray  # dataset rows the task uses (sorted)
    target: np.ndarray  # per dataset row: the class (-1 where unused)
    relation: np.ndarray  # per dataset row: the relation code (0 when the dataset has none)
    relations: tuple[str, ...]
    classes: list[str]
    n_outputs: int  # outputs per head
    binary: bool  # scored with one logit picked by the relation


def make_task(ds, task: str) -> TaskData:
    """The rows, targets and relations of ``task`` on ``ds``."""

    n = len(ds)
    try:
        rt = row_targets(ds)
        relation, relations = rt.relation, rt.relations
        label = rt.label
    except Exception:
        relation, relations, label = np.zeros(n, dtype=np.int64), ("all",), None
    if task == "relation":
        if label is None:
            raise ValueError("task 'relation' needs a spatial dataset (spatial_relation and label columns)")
        rows = np.flatnonzero(label == 1)
        target = np.where(label == 1, relation, -1)
        return TaskData(task, rows, target, relation, relations, list(relations), len(relations), False)
    if task == "binary":
        if label is None:
            raise ValueError("task 'binary' needs a spatial dataset (spatial_relation and label columns)")
        return TaskData(
            task, np.arange(n), label.astype(np.int64), relation, relations, ["false", "true"], len(relations), True
        )
    if task not in ds.column_names:
        raise ValueError(
            f"task must be one of {TASKS} or an integer column of the dataset ({', '.join(ds.column_names)}); "
            f"got {task!r}"
        )
    values = np.asarray(column_values(ds, task))
    if values.dtype.kind not in "iub":
        raise ValueError(
            f"column {task!r} is not an integer column (dtype {values.dtype}); it cannot be a probe target"
        )
    classes, target = np.unique(values.astype(np.int64), return_inverse=True)
    if len(classes) < 2:
        raise ValueError(f"column {task!r} has a single value; there is nothing to probe")
    return TaskData(
        task,
        np.arange(n),
        target.reshape(-1).astype(np.int64),
        relation,
        relations,
        [str(c) for c in classes],
        len(classes),
        False,
    )


def task_rows(ds, task: TaskData, seed: int, fractions) -> dict[str, np.ndarray]:
    """The task's rows of each split (train, validation, test), the split made by image."""
    in_task = np.zeros(len(ds), dtype=bool)
    in_task[task.rows] = True
    rows = {name: idx[in_task[idx]] for name, idx in split_indices(ds, seed, fractions).items()}
    for name, idx in rows.items():
        if len(idx) == 0:
            raise ValueError(f"the {name} split has no rows for task {task.name!r}; use a larger dataset")
    return rows


def encoded_labels(task: TaskData) -> np.ndarray:
    """Per dataset row, class and relation in one int64 (``class * n_relations + relation``; -1 unused),
    so one label tensor per batch carries both."""
    return np.where(task.target >= 0, task.target * len(task.relations) + task.relation, -1).astype(np.int64)
