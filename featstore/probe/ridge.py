"""Closed-form ridge probes over a grid of strengths: one streaming float64 pass accumulates XᵀX and XᵀY
of every (feature set, view), then one eigendecomposition per view gives the solution for every strength
(scikit-learn's ``RidgeCV`` eigen mode), each scored on validation. A view wider than the train rows are
many (a flattened patch grid) takes the dual form instead: the pass keeps the rows (n x d, less than the
d x d of XᵀX) and one eigendecomposition of the n x n Gram matrix X Xᵀ gives every strength, as
scikit-learn does when n_features > n_samples. Classification is one-hot in {-1, 1}
as ``RidgeClassifier`` does; the ``binary`` task fits one single-output ridge per relation.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from ..batches import FeatureStore
from .heads import view_dim, view_input
from .tasks import TaskData

DEFAULT_ALPHAS = tuple(float(a) for a in np.logspace(-3, 7, 51))
MAX_DIM = 4096  # a view wider than this (a large flattened grid) gets no closed-form head: XᵀX would not fit


def ridge_targets(target: torch.Tensor, n_classes: int) -> torch.Tensor:
    """Targets as ``RidgeClassifier`` codes them: one column per class in {-1, 1}, one column for two classes."""
    if n_classes == 2:
        return (target.double() * 2 - 1).view(-1, 1)
    y = -torch.ones(len(target), n_classes, dtype=torch.float64, device=target.device)
    y[torch.arange(len(target), device=target.device), target] = 1.0
    return y


def decide(scores: torch.Tensor) -> torch.Tensor:
    """Classes from ridge outputs (..., k): the sign of a single column, else the largest column."""
    return (scores[..., 0] > 0).long() if scores.shape[-1] == 1 else scores.argmax(-1)


@dataclass
class RidgePath:
    """The ridge solution of one view for every strength, W(alpha) = B diag(1 / (eigvals + alpha)) proj and
    b = mean_y - mean_x W. Primal: centred XᵀX = V diag(eigvals) Vᵀ, B = V, ``proj`` = Vᵀ XcᵀYc. Dual: centred
    Xc Xcᵀ = U diag(eigvals) Uᵀ, B = Xcᵀ U (dim x n), ``proj`` = Uᵀ Yc; both give the same W."""

    mean_x: torch.Tensor
    mean_y: torch.Tensor
    eigvals: torch.Tensor
    eigvecs: torch.Tensor
    proj: torch.Tensor

    def coef(self, alpha: float) -> tuple[torch.Tensor, torch.Tensor]:
        """(weights (dim, k), intercept (k,)) for one strength, in float64."""
        w = self.eigvecs @ (self.proj / (self.eigvals + alpha).unsqueeze(1))
        return w, self.mean_y - self.mean_x @ w

    def predict(self, x: torch.Tensor, alphas: torch.Tensor) -> torch.Tensor:
        """Outputs (n_alphas, rows, k) of every strength on rows ``x`` (rows, dim)."""
        p = (x.double() - self.mean_x) @ self.eigvecs  # (rows, dim)
        scaled = self.proj.unsqueeze(0) / (self.eigvals.unsqueeze(0) + alphas.unsqueeze(1)).unsqueeze(2)
        return torch.einsum("nd,adk->ank", p, scaled) + self.mean_y


class Rows:
    """The dual form's accumulator: the streamed rows of one view and their targets, in float64."""

    def __init__(self, dim: int, k: int, device: torch.device):
        self.dim, self.k, self.device = dim, k, device
        self.xs: list[torch.Tensor] = []
        self.ys: list[torch.Tensor] = []

    def add(self, x: torch.Tensor, y: torch.Tensor) -> None:
        self.xs.append(x.double())
        self.ys.append(y.double())

    def solve(self) -> RidgePath:
        """One eigendecomposition of the centred Gram matrix Xc Xcᵀ (n x n; the intercept is not penalised)."""
        f64 = torch.float64
        x = torch.cat(self.xs) if self.xs else torch.zeros(0, self.dim, dtype=f64, device=self.device)
        y = torch.cat(self.ys) if self.ys else torch.zeros(0, self.k, dtype=f64, device=self.device)
        self.xs, self.ys = [x], [y]  # one block each: solve() again gives the same path
        if not len(x):  # no rows (a relation absent from train): the zero solution, as Gram gives
            d, k, dev = self.dim, self.k, self.device
            return RidgePath(
                torch.zeros(d, dtype=f64, device=dev),
                torch.zeros(k, dtype=f64, device=dev),
                torch.zeros(1, dtype=f64, device=dev),
                torch.zeros(d, 1, dtype=f64, device=dev),
                torch.zeros(1, k, dtype=f64, device=dev),
            )
        mx, my = x.mean(0), y.mean(0)
        x = x - mx
        gram = x @ x.T
        lam, u = torch.linalg.eigh((gram + gram.T) / 2)
        return RidgePath(mx, my, lam.clamp_min(0), x.T @ u, u.T @ (y - my))


class Gram:
    """float64 sums of one view over streamed rows: the count, Σx, Σy, XᵀX and XᵀY."""

    def __init__(self, dim: int, k: int, device: torch.device):
        f64 = torch.float64
        self.n = 0
        self.sx, self.sy = torch.zeros(dim, dtype=f64, device=device), torch.zeros(k, dtype=f64, device=device)
        self.xx = torch.zeros(dim, dim, dtype=f64, device=device)
        self.xy = torch.zeros(dim, k, dtype=f64, device=device)

    def add(self, x: torch.Tensor, y: torch.Tensor) -> None:
        x, y = x.double(), y.double()
        self.n += len(x)
        self.sx += x.sum(0)
        self.sy += y.sum(0)
        self.xx.addmm_(x.T, x)
        self.xy.addmm_(x.T, y)

    def solve(self) -> RidgePath:
        """One eigendecomposition of the centred XᵀX (the intercept is not penalised, as in scikit-learn)."""
        n = max(self.n, 1)
        mx, my = self.sx / n, self.sy / n
        c = self.xx - n * torch.outer(mx, mx)
        cy = self.xy - n * torch.outer(mx, my)
        lam, v = torch.linalg.eigh((c + c.T) / 2)
        return RidgePath(mx, my, lam.clamp_min(0), v, v.T @ cy)


def dual_form(dim: int, n_rows: int) -> bool:
    """Whether a view of ``dim`` features over ``n_rows`` train rows is solved in the dual (Gram) form:
    when it is wider than the rows are many, so X Xᵀ (n x n) is smaller than XᵀX (d x d)."""
    return dim > n_rows


def _outputs(task: TaskData) -> int:
    return 1 if task.binary or len(task.classes) == 2 else len(task.classes)


def _split_labels(y: torch.Tensor, task: TaskData) -> tuple[torch.Tensor, torch.Tensor]:
    return y // len(task.relations), y % len(task.relations)


def ridge_probes(
    store: FeatureStore,
    views: dict[str, list[str]],
    task: TaskData,
    rows: dict[str, np.ndarray],
    labels: np.ndarray,
    alphas: Sequence[float],
    batch_size: int,
    device: torch.device,
) -> dict[tuple[str, str], tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """Ridge over ``alphas`` for every (key, view) of ``views``, sharing one pass over the train rows of all
    sets (and one over validation, one over test). Returns per (key, view): validation correctness
    (n_alphas, n_val), test correctness (n_alphas, n_test) and the test rows' relation codes."""
    keys = list(views)
    k = _outputs(task)
    groups = len(task.relations) if task.binary else 1  # binary: one ridge per relation
    grams: dict[tuple[str, str], list[Gram | Rows]] = {}
    for key in keys:
        for view in views[key]:
            dim = view_dim(store[key].row_shape, view)
            form = Rows if dual_form(dim, len(rows["train"])) else Gram
            grams[key, view] = [form(dim, k, device) for _ in range(groups)]
    for x, y in _passes(store, keys, rows["train"], labels, batch_size, device):
        tgt, rel = _split_labels(y, task)
        yy = ridge_targets(tgt, 2 if task.binary else len(task.classes))
        for (key, view), gs in grams.items():
            xv = view_input(x[key], view)
            if task.binary:
                for r, g in enumerate(gs):
                    sel = rel == r
                    if bool(sel.any()):
                        g.add(xv[sel], yy[sel])
            else:
                gs[0].add(xv, yy)
    paths = {kv: [g.solve() for g in gs] for kv, gs in grams.items()}
    del grams  # the sums (or the dual form's rows) are no longer needed
    a = torch.tensor([float(v) for v in alphas], dtype=torch.float64, device=device)
    out: dict[tuple[str, str], list] = {kv: [] for kv in paths}
    for split in ("validation", "test"):
        ok: dict[tuple[str, str], list[torch.Tensor]] = {kv: [] for kv in paths}
        rels = []
        for x, y in _passes(store, keys, rows[split], labels, batch_size, device):
            tgt, rel = _split_labels(y, task)
            rels.append(rel.cpu())
            for (key, view), ps in paths.items():
                xv = view_input(x[key], view)
                if task.binary:
                    s = torch.stack([p.predict(xv, a)[..., 0] for p in ps], 2)  # (alphas, rows, relations)
                    pred = (s.gather(2, rel.view(1, -1, 1).expand(len(a), -1, 1)).squeeze(2) > 0).long()
                else:
                    pred = decide(ps[0].predict(xv, a))
                ok[key, view].append((pred == tgt.view(1, -1)).cpu())
        for kv in paths:
            out[kv].append(torch.cat(ok[kv], 1).numpy())
        if split == "test":
            test_rel = torch.cat(rels).numpy()
    return {kv: (v[0], v[1], test_rel) for kv, v in out.items()}


def _passes(store: FeatureStore, keys: list[str], rows: np.ndarray, labels: np.ndarray, batch_size: int, device):
    """(dict of each set's rows, labels) batches in row order: one gather of every set per batch."""
    for x, y, _idx in store.batches(
        keys, batch_size, rows=rows, labels=labels, shuffle=False, device=device, single=False, rank=0, world_size=1
    ):
        assert isinstance(x, dict) and y is not None  # several sets, labels given
        yield x, y
