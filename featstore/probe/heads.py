"""Linear probe heads, stacked: every (learning rate, weight decay) setting of one input view of one
feature set is a column block of one matrix, so one matmul serves them all; AdamW per column. Also what
every stacked head group shares: the views of a set, the standardisation, AdamW with a learning rate
and weight decay per head, and the module DistributedDataParallel wraps."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

from ..distributed import Ranks
from ..store import FeatureSet


@dataclass
class HeadGroup:
    """The stacked heads of one input view of one feature set."""

    view: str  # 'vector' (a vector set), 'flat' or 'mean' (a patch grid)
    dim: int
    settings: list[tuple[float, float]]
    n_out: int
    weight: torch.nn.Parameter = field(init=False)
    bias: torch.nn.Parameter = field(init=False)
    kind = "linear"

    def __post_init__(self):
        self.h = len(self.settings)

    @property
    def head_params(self) -> int:
        """Parameters of one head."""
        return self.dim * self.n_out + self.n_out

    def params(self) -> list[torch.nn.Parameter]:
        return [self.weight, self.bias]

    def update(self) -> None:
        """One AdamW step of every head from the gradients backward() left."""
        gw, gb = self.weight.grad, self.bias.grad
        assert gw is not None and gb is not None  # every head is in the loss: backward() set them
        adamw_step(self, gw, gb)

    def setup(self, device, mean: torch.Tensor, std: torch.Tensor):
        self.weight = torch.nn.Parameter(torch.zeros(self.dim, self.h * self.n_out, device=device))
        self.bias = torch.nn.Parameter(torch.zeros(self.h * self.n_out, device=device))
        self.mean, self.inv_std = mean.to(device), (1.0 / std).to(device)
        self.lr = torch.tensor([lr for lr, _ in self.settings], device=device).repeat_interleave(self.n_out)
        self.wd = torch.tensor([wd for _, wd in self.settings], device=device).repeat_interleave(self.n_out)
        self.state = [torch.zeros_like(t) for t in (self.weight, self.weight, self.bias, self.bias)]
        self.step = 0

    def inputs(self, x: torch.Tensor) -> torch.Tensor:
        return (view_input(x, self.view) - self.mean) * self.inv_std

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        """(batch, heads, outputs) from the view's input: one matmul for all heads."""
        return (x @ self.weight + self.bias).view(len(x), self.h, self.n_out)


class StackedHeads(torch.nn.Module):
    """Every view's stacked heads of one feature set as one module, so DistributedDataParallel can wrap it:
    ``forward(x)`` is the list of each view's (batch, heads, outputs) logits."""

    def __init__(self, groups: list[HeadGroup]):
        super().__init__()
        self.groups = groups
        for g in groups:
            for i, p in enumerate(g.params()):
                self.register_parameter(f"{g.kind}_{g.view}_{i}", p)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        return [g.logits(g.inputs(x)) for g in self.groups]


def data_parallel(heads: StackedHeads, ranks: Ranks, device: torch.device) -> torch.nn.Module:
    """``heads`` wrapped in DistributedDataParallel under torchrun (gradients averaged over the ranks), else itself."""
    if not ranks.distributed:
        return heads
    from torch.nn.parallel import DistributedDataParallel

    return DistributedDataParallel(heads, device_ids=[device.index] if device.type == "cuda" else None)


def scores(group, logits: torch.Tensor, y: torch.Tensor, rel: torch.Tensor, binary: bool):
    """Per-head loss (summed over heads) and per-head predictions."""
    if binary:
        picked = logits.gather(2, rel.view(-1, 1, 1).expand(-1, group.h, 1)).squeeze(2)  # (batch, heads)
        target = y.float().view(-1, 1).expand_as(picked)
        loss = torch.nn.functional.binary_cross_entropy_with_logits(picked, target, reduction="mean") * group.h
        return loss, (picked > 0).long()
    flat = logits.reshape(-1, group.n_out)
    loss = torch.nn.functional.cross_entropy(flat, y.repeat_interleave(group.h), reduction="mean") * group.h
    return loss, logits.argmax(2)


def adamw_step(group: HeadGroup, gw: torch.Tensor, gb: torch.Tensor, b1=0.9, b2=0.999, eps=1e-8):
    """One AdamW step of every head, each column with its own learning rate and weight decay."""
    group.step += 1
    c1, c2 = 1 - b1**group.step, 1 - b2**group.step
    mw, vw, mb, vb = group.state
    for p, g, m, v, decay in ((group.weight, gw, mw, vw, True), (group.bias, gb, mb, vb, False)):
        m.mul_(b1).add_(g, alpha=1 - b1)
        v.mul_(b2).addcmul_(g, g, value=1 - b2)
        if decay:
            p.mul_(1 - group.lr * group.wd)
        p.sub_(group.lr * (m / c1) / ((v / c2).sqrt() + eps))


def adamw_leading(group, b1=0.9, b2=0.999, eps=1e-8) -> None:
    """One AdamW step of every parameter of ``group`` whose first dimension is the head: head i with
    learning rate ``group.lr[i]`` and weight decay ``group.wd[i]`` (not on biases, 2-d tensors)."""
    group.step += 1
    c1, c2 = 1 - b1**group.step, 1 - b2**group.step
    for p, (m, v) in zip(group.params(), group.state):
        g = p.grad
        assert g is not None  # every head is in the loss: backward() set it
        shape = (-1,) + (1,) * (p.dim() - 1)
        lr, wd = group.lr.view(shape), group.wd.view(shape)
        m.mul_(b1).add_(g, alpha=1 - b1)
        v.mul_(b2).addcmul_(g, g, value=1 - b2)
        if p.dim() > 2:
            p.mul_(1 - lr * wd)
        p.sub_(lr * (m / c1) / ((v / c2).sqrt() + eps))


def views(fs: FeatureSet) -> list[str]:
    """The inputs a set offers a head: ``vector`` (a pooled set), or ``flat`` and ``mean`` (a patch grid)."""
    return ["vector"] if len(fs.row_shape) == 1 else ["flat", "mean"]


def view_input(x: torch.Tensor, view: str) -> torch.Tensor:
    """A batch (rows, *row_shape) as a view's float32 input: the grid's mean over tokens (``mean``), the
    grid itself (``grid``, for attentive heads), else each row flattened."""
    x = x.float()
    if view == "grid":
        return x
    return x.mean(1) if view == "mean" else x.flatten(1)


def view_dim(row_shape, view: str) -> int:
    """The width of a view's input: a grid's token width for ``mean`` and ``grid``, else every element of a row."""
    return int(row_shape[-1]) if view in ("mean", "grid") else int(np.prod(row_shape))


def standardisation(fs: FeatureSet, rows: np.ndarray, view: str, seed: int, sample: int = 4096):
    """Mean and std of a view's input on a seeded sample of the train rows."""
    rng = np.random.default_rng([seed, 7])
    pick = np.sort(rng.choice(rows, size=min(sample, len(rows)), replace=False))
    x = view_input(fs[pick], view)
    x = x.reshape(-1, x.shape[-1]) if view == "grid" else x  # a grid: each token dimension over all tokens
    return x.mean(0), x.std(0).clamp_min(1e-6)
