"""Logistic-regression probes as scikit-learn's ``LogisticRegression`` fits them: full batch, multinomial,
L-BFGS, standardised features, over a grid of C (each fit warm-started from the previous, weaker-C one).

The objective per C is ``mean cross-entropy + ||W||² / (2 C n)``, scikit-learn's ``C · Σ loss + ||W||² / 2``
divided by ``C n``; the intercept is not penalised. The ``binary`` task has one logit per relation, each
row scored on its relation's (as the linear heads do).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from ..batches import FeatureSet
from .heads import view_input
from .tasks import TaskData

DEFAULT_CS = tuple(float(c) for c in np.logspace(-4, 4, 10))  # LogisticRegressionCV's default grid
MAX_ITER = 200


def _load(fs: FeatureSet, rows: np.ndarray, view: str, labels: np.ndarray, task: TaskData, device):
    x = view_input(fs[np.sort(rows)], view).to(device)
    y = torch.as_tensor(labels[np.sort(rows)], device=device)
    return x, y // len(task.relations), y % len(task.relations)


def _loss(x, tgt, rel, w, b, binary: bool) -> torch.Tensor:
    logits = x @ w + b
    if binary:
        picked = logits.gather(1, rel.view(-1, 1)).squeeze(1)
        return torch.nn.functional.binary_cross_entropy_with_logits(picked, tgt.to(picked.dtype))
    return torch.nn.functional.cross_entropy(logits, tgt)


def _predict(x, rel, w, b, binary: bool) -> torch.Tensor:
    logits = x @ w + b
    if binary:
        return (logits.gather(1, rel.view(-1, 1)).squeeze(1) > 0).long()
    return logits.argmax(1)


def fit_path(
    x: torch.Tensor, tgt: torch.Tensor, rel: torch.Tensor, n_out: int, binary: bool, cs: Sequence[float]
) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """(weights, bias) for every C of ``cs`` (in the order given) on standardised rows ``x``; the fits run
    from the smallest C up, each starting where the previous one ended."""
    n = len(x)
    w = torch.zeros(x.shape[1], n_out, dtype=x.dtype, device=x.device, requires_grad=True)
    b = torch.zeros(n_out, dtype=x.dtype, device=x.device, requires_grad=True)
    fits: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}
    for i in sorted(range(len(cs)), key=lambda j: cs[j]):
        penalty = 1.0 / (2.0 * float(cs[i]) * n)
        opt = torch.optim.LBFGS(
            [w, b],
            lr=1.0,
            max_iter=MAX_ITER,
            tolerance_grad=1e-4,  # scikit-learn's default tol (its gtol) on the same mean-loss gradient
            tolerance_change=1e-9,
            history_size=20,
            line_search_fn="strong_wolfe",
        )

        def closure(penalty=penalty, opt=opt):
            opt.zero_grad()
            loss = _loss(x, tgt, rel, w, b, binary) + penalty * (w * w).sum()
            loss.backward()
            return loss

        opt.step(closure)
        fits[i] = (w.detach().clone(), b.detach().clone())
    return [fits[i] for i in range(len(cs))]


def logistic_probe(
    fs: FeatureSet,
    view: str,
    task: TaskData,
    rows: dict[str, np.ndarray],
    labels: np.ndarray,
    cs: Sequence[float],
    device: torch.device,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Logistic regression over ``cs`` on one view of ``fs`` (the train rows in memory, standardised with
    their own mean and std, as ``StandardScaler`` does). Returns validation correctness (n_cs, n_val),
    test correctness (n_cs, n_test) and the test rows' relation codes, test rows in sorted order."""
    x, tgt, rel = _load(fs, rows["train"], view, labels, task, device)
    mean, std = x.mean(0), x.std(0, unbiased=False)
    std = torch.where(std > 1e-12, std, torch.ones_like(std))
    n_out = len(task.relations) if task.binary else len(task.classes)
    fits = fit_path((x - mean) / std, tgt, rel, n_out, task.binary, cs)
    out = []
    for split in ("validation", "test"):
        xs, ts, rs = _load(fs, rows[split], view, labels, task, device)
        xs = (xs - mean) / std
        out.append(torch.stack([_predict(xs, rs, w, b, task.binary) == ts for w, b in fits]).cpu().numpy())
    return out[0], out[1], rs.cpu().numpy()
