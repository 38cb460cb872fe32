"""Encoding: distinct images decoded and preprocessed in DataLoader workers, one forward pass per
batch for every layer and pooling, and each writer given exactly the rows it has not committed."""

from __future__ import annotations

import signal
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .._dtypes import TORCH_DTYPES
from ..encoders import Encoder, pool
from ..errors import ExtractionError
from ..store.quant import stored_as
from .plan import Job, Plan


# ---- reading images in workers -----------------------------------------------------------------
class _Images(torch.utils.data.Dataset):
    """Distinct image ``j`` -> (j, PIL image); decoded in DataLoader workers."""

    def __init__(self, paths: list[Path], first_row: list[int]):
        self.paths = paths
        self.first_row = first_row

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, j: int):
        from PIL import Image

        try:
            with Image.open(self.paths[j]) as im:
                return j, im.convert("RGB")
        except Exception as exc:
            # returned, not raised: raised in a worker, DataLoader would wrap it in its own traceback text
            return j, ExtractionError(
                f"row {self.first_row[j]}: cannot read image {self.paths[j]} ({exc}); "
                "replace the file or remove the row (`featstore dataset validate` finds every such image)"
            )


class _Collate:
    """A batch of (j, image) -> (indices, model inputs); the encoder's preprocessing runs in the worker.
    An image that could not be read comes back as its error instead: (indices, error)."""

    def __init__(self, encoder: Encoder):
        self.encoder = encoder

    def __call__(self, items):
        idx = [j for j, _ in items]
        errors = [im for _, im in items if isinstance(im, ExtractionError)]
        return idx, errors[0] if errors else self.encoder.preprocess([im for _, im in items])


def _worker_leaves_ctrl_c_to_the_main_process(worker_id: int) -> None:
    """DataLoader ``worker_init_fn``: Ctrl-C is the main process's to handle (it reports the committed
    rows in one line and shuts the workers down). A worker ignores SIGINT, and stays quiet when the
    main process, interrupted, drops a batch's shared memory half-received: the worker's fd-sharing
    thread (multiprocessing.resource_sharer) would print that OSError's traceback to the terminal."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    report = sys.excepthook

    def quiet_on_a_lost_peer(kind, value, tb) -> None:
        if not issubclass(kind, (OSError, EOFError)):
            report(kind, value, tb)

    sys.excepthook = quiet_on_a_lost_peer


def _runs(rows: np.ndarray) -> list[tuple[int, int]]:
    """Sorted rows -> contiguous [start, end) runs."""
    if not len(rows):
        return []
    breaks = np.flatnonzero(np.diff(rows) != 1) + 1
    return [(int(s[0]), int(s[-1]) + 1) for s in np.split(rows, breaks)]


def encode_batches(
    job: Job, todo: list[list[int]], writer_for: Callable, after_batch: Callable[[int, int], None]
) -> None:
    """Encode each batch of distinct images in ``todo`` (decoded in DataLoader workers) and write every
    (layer, pooling)'s rows that its writer, ``writer_for(lp, key, row_shape)``, has not committed;
    ``after_batch(batches_done, images)`` after each batch."""
    if not todo:
        return
    plan = job.plan
    loader = torch.utils.data.DataLoader(
        _Images(plan.paths, plan.first_row),
        batch_sampler=todo,
        num_workers=job.num_workers,
        collate_fn=_Collate(plan.encoder),
        persistent_workers=False,
        prefetch_factor=2 if job.num_workers else None,
        worker_init_fn=_worker_leaves_ctrl_c_to_the_main_process if job.num_workers else None,
    )
    for done, (idx, inputs) in enumerate(loader, 1):
        if isinstance(inputs, ExtractionError):
            raise inputs
        tokens = plan.encoder.forward(inputs, plan.layers)
        rows, where = _batch_rows(plan, idx)
        for (layer, p), key in job.active.items():
            feats = pool(tokens[layer], p).to("cpu", dtype=TORCH_DTYPES[stored_as(job.store_dtype)[0]])
            writer = writer_for((layer, p), key, tuple(feats.shape[1:]))
            for a, b in _runs(_uncommitted(writer, rows)):
                first = int(np.searchsorted(rows, a))  # rows a..b-1 are consecutive entries of the sorted rows
                writer.write(a, feats[torch.from_numpy(where[first : first + b - a])].contiguous())
        after_batch(done, len(idx))


def row_shapes(job: Job) -> dict[str, tuple[int, ...]]:
    """The row shape of every active set, from one forward pass of the first image."""
    plan = job.plan
    _, inputs = _Collate(plan.encoder)([_Images(plan.paths, plan.first_row)[0]])
    if isinstance(inputs, ExtractionError):
        raise inputs
    tokens = plan.encoder.forward(inputs, plan.layers)
    return {key: tuple(pool(tokens[layer], p).shape[1:]) for (layer, p), key in job.active.items()}


def _batch_rows(plan: Plan, idx: list[int]) -> tuple[np.ndarray, np.ndarray]:
    """The dataset rows of a batch of distinct images (sorted), and for each the image's position in
    the batch: sized by the batch, not by the dataset."""
    parts = [plan.rows_of[j] for j in idx]
    rows = np.concatenate(parts)
    where = np.repeat(np.arange(len(idx), dtype=np.int64), [len(r) for r in parts])
    order = np.argsort(rows, kind="stable")
    return rows[order], where[order]


def _uncommitted(writer, rows: np.ndarray) -> np.ndarray:
    keep = np.ones(len(rows), dtype=bool)
    for a, b in writer.committed_ranges:
        keep &= ~((rows >= a) & (rows < b))
    return rows[keep]


def progress_bar(total: int, enabled: bool) -> Any:
    """A tqdm bar of images on stderr (disabled: counts silently)."""
    from tqdm.auto import tqdm

    return tqdm(total=total, unit="img", desc="extract", disable=not enabled, file=sys.stderr, smoothing=0.1)
