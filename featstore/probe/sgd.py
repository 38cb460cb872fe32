"""The heads trained by gradient steps (linear, attentive, mlp), many at once: every head group of a
feature set reads the same gathered batch, one backward pass serves them all, and each group takes its
own AdamW step. Also their evaluation, one pass over a split for every group."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from ..batches import FeatureSet
from ..distributed import Ranks
from .attentive import AttentiveGroup
from .heads import HeadGroup, StackedHeads, data_parallel, scores, standardisation, view_dim, views
from .mlp import MLPGroup
from .tasks import TaskData

EVAL_BATCH = 4096
SGD_HEADS = ("linear", "attentive", "mlp")


def make_groups(fs: FeatureSet, kinds: Sequence[str], settings: list[tuple[float, float]], n_out: int, max_dim: int):
    """The head groups of ``fs`` for the gradient-trained ``kinds``: ``linear`` on every view, ``mlp`` on
    the views at most ``max_dim`` wide, ``attentive`` on a patch grid's tokens."""
    groups: list = []
    for kind in kinds:
        if kind == "linear":
            groups += [HeadGroup(v, view_dim(fs.row_shape, v), settings, n_out) for v in views(fs)]
        elif kind == "mlp":
            dims = {v: view_dim(fs.row_shape, v) for v in views(fs)}
            groups += [MLPGroup(v, d, settings, n_out) for v, d in dims.items() if d <= max_dim]
        elif kind == "attentive" and len(fs.row_shape) == 2:
            groups.append(AttentiveGroup(int(fs.row_shape[-1]), settings, n_out, int(fs.row_shape[0])))
    return groups


def train_groups(
    fs: FeatureSet,
    groups: list,
    t: TaskData,
    train_rows: np.ndarray,
    labels: np.ndarray,
    epochs: int,
    batch_size: int,
    seed: int,
    ranks: Ranks,
    device: torch.device,
) -> None:
    """Train every group of ``fs`` for ``epochs``, each batch gathered once and shared by every head."""
    torch.manual_seed(seed)
    for g in groups:
        g.setup(device, *standardisation(fs, train_rows, g.view, seed))
    heads = StackedHeads(groups)
    net = data_parallel(heads, ranks, device)
    loader = fs.batches(
        max(1, batch_size // ranks.world_size),
        rows=train_rows,
        labels=labels,
        seed=seed,
        device=device,
        rank=ranks.rank,
        world_size=ranks.world_size,
    )
    for _ in range(epochs):
        for x, y, _idx in loader:  # one gather, shared by every head
            assert isinstance(x, torch.Tensor) and y is not None  # one feature set, labels given
            tgt, rel = y // len(t.relations), y % len(t.relations)
            loss = sum(scores(g, out, tgt, rel, t.binary)[0] for g, out in zip(groups, net(x)))
            assert isinstance(loss, torch.Tensor)  # the caller gives at least one head group
            heads.zero_grad(set_to_none=True)
            loss.backward()  # under DDP: the gradients averaged over the ranks
            with torch.no_grad():
                for g in groups:
                    g.update()


def evaluate_groups(
    fs: FeatureSet, groups: list, rows: np.ndarray, labels: np.ndarray, task: TaskData, device: torch.device
) -> tuple[list[np.ndarray], np.ndarray]:
    """Per group (in order): (heads, rows) correctness; and the rows' relation codes."""
    correct: list[list[torch.Tensor]] = [[] for _ in groups]
    rels = []
    with torch.no_grad():
        for x, y, _idx in fs.batches(
            EVAL_BATCH, rows=rows, labels=labels, shuffle=False, device=device, rank=0, world_size=1
        ):
            assert isinstance(x, torch.Tensor) and y is not None  # one feature set, labels given
            t, r = y // len(task.relations), y % len(task.relations)
            rels.append(r.cpu())
            for i, g in enumerate(groups):
                _, pred = scores(g, g.logits(g.inputs(x)), t, r, task.binary)
                correct[i].append((pred == t.view(-1, 1)).T.cpu())
    return [torch.cat(c, 1).numpy() for c in correct], torch.cat(rels).numpy()
