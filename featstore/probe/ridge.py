"""Closed-form ridge probes over a grid of strengths: one streaming float64 pass accumulates XᵀX and XᵀY
of every (feature set, view), then one factorisation per view gives the solution for every strength
(:func:`shifted_solves`: a tridiagonalisation on the CPU, as fast as half an eigendecomposition; else
scikit-learn's ``RidgeCV`` eigen mode), each scored on validation. A view wider than the train rows are
many (a flattened patch grid) takes the dual form instead: the pass keeps the rows (n x d, less than
the d x d of XᵀX) and the n x n Gram matrix X Xᵀ is factorised, as scikit-learn does when
n_features > n_samples. Classification is one-hot in {-1, 1} as ``RidgeClassifier`` does; the
``binary`` task fits one single-output ridge per relation.
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
    """The ridge solution of one view for every strength of ``alphas``: weights (n_alphas, dim, k) and
    intercepts b = mean_y - mean_x W (n_alphas, k), in float64, from one factorisation (:func:`shifted_solves`)."""

    mean_x: torch.Tensor
    mean_y: torch.Tensor
    alphas: torch.Tensor
    weights: torch.Tensor

    @property
    def intercepts(self) -> torch.Tensor:
        return self.mean_y - torch.einsum("d,adk->ak", self.mean_x, self.weights)

    def coef(self, alpha: float) -> tuple[torch.Tensor, torch.Tensor]:
        """(weights (dim, k), intercept (k,)) for one strength of the path, in float64."""
        hit = (self.alphas == float(alpha)).nonzero()
        if not len(hit):
            raise KeyError(f"strength {alpha} is not one of this path's {len(self.alphas)} strengths")
        i = int(hit[0, 0])
        return self.weights[i], self.intercepts[i]

    def predict(self, x: torch.Tensor) -> torch.Tensor:
        """Outputs (n_alphas, rows, k) of every strength on rows ``x`` (rows, dim): one matmul."""
        a, d, k = self.weights.shape
        flat = self.weights.permute(1, 0, 2).reshape(d, a * k)
        out = (x.double() @ flat).view(len(x), a, k).permute(1, 0, 2)
        return out + self.intercepts.unsqueeze(1)


def shifted_solves(k: torch.Tensor, r: torch.Tensor, alphas: torch.Tensor, tridiagonal: bool | None = None):
    """(K + alpha I)⁻¹ R (n_alphas, p, q) for every strength, K (p, p) symmetric positive semi-definite, in
    float64. On the CPU (``tridiagonal`` None or True): one Householder tridiagonalisation K = Q T Qᵀ
    (LAPACK ``dsytrd`` through SciPy, about half an eigendecomposition's time) and one tridiagonal solve
    per strength; else (a GPU, ``tridiagonal=False``, or LAPACK reporting a failure) one
    eigendecomposition K = V diag(l) Vᵀ, as scikit-learn does. Only K's lower triangle is read."""
    if tridiagonal is not False and k.device.type == "cpu" and len(k) > 1:
        from scipy.linalg import lapack  # type: ignore[import-untyped]

        out = _tridiagonal_solves(lapack, k.numpy(), r.numpy(), alphas.numpy())
        if out is not None:
            return torch.from_numpy(out)
    lam, v = torch.linalg.eigh(k, UPLO="L")
    proj = v.T @ r
    scaled = proj.unsqueeze(0) / (lam.clamp_min(0).unsqueeze(0) + alphas.unsqueeze(1)).unsqueeze(2)
    return torch.einsum("pm,amq->apq", v, scaled)


def _tridiagonal_solves(lapack, k: np.ndarray, r: np.ndarray, alphas: np.ndarray) -> np.ndarray | None:
    """(K + alpha I)⁻¹ R by dsytrd + dgtsv; None where LAPACK reports a failure (the caller falls back)."""
    p, q = r.shape
    c, diag, off, tau, info = lapack.dsytrd(k, lower=1)
    if info:
        return None

    def apply_q(b: np.ndarray, trans: str) -> np.ndarray:
        # sytrd's reflectors (lower) are a QR factorisation's, one row down: Q = diag(1, Q_qr)
        out = b.copy()
        sub, _, inf = lapack.dormqr("L", trans, c[1:, :-1], tau, b[1:], lwork=max(1, 64 * b.shape[1]))
        out[1:] = sub
        return out if not inf else np.full_like(b, np.nan)

    qr = apply_q(np.ascontiguousarray(r), "T")
    sol = np.empty((p, len(alphas), q))
    for i, a in enumerate(alphas):
        *_, x, inf = lapack.dgtsv(off, diag + a, off, qr)
        if inf:
            return None
        sol[:, i] = x
    out = apply_q(sol.reshape(p, len(alphas) * q), "N").reshape(p, len(alphas), q).transpose(1, 0, 2)
    return np.ascontiguousarray(out) if np.isfinite(out).all() else None


class Rows:
    """The dual form's accumulator: the streamed rows of one view (float32, as the views give them) and their
    targets (float64)."""

    def __init__(self, dim: int, k: int, device: torch.device):
        self.dim, self.k, self.device = dim, k, device
        self.xs: list[torch.Tensor] = []
        self.ys: list[torch.Tensor] = []

    def add(self, x: torch.Tensor, y: torch.Tensor) -> None:
        self.xs.append(x.float())
        self.ys.append(y.double())

    def solve(self, alphas: torch.Tensor, tridiagonal: bool | None = None) -> RidgePath:
        """The solutions W = Xcᵀ (Xc Xcᵀ + alpha I)⁻¹ Yc from the centred Gram matrix (n x n; the intercept
        is not penalised), as scikit-learn solves a view wider than its rows are many."""
        f64 = torch.float64
        a = alphas.to(f64)
        if not self.xs:  # no rows (a relation absent from train): the zero solution, as Gram gives
            zeros = torch.zeros(len(a), self.dim, self.k, dtype=f64, device=self.device)
            return RidgePath(torch.zeros(self.dim, dtype=f64, device=self.device), zeros[0, 0], a, zeros)
        n = sum(len(c) for c in self.xs)
        x = torch.empty(n, self.dim, dtype=f64, device=self.device)
        at = 0
        for chunk in self.xs:  # float64 rows (a plain copy_: 5x faster than a mixed-type subtract)
            x[at : at + len(chunk)].copy_(chunk)
            at += len(chunk)
        mx = x.mean(0)
        x -= mx
        y = torch.cat(self.ys)
        my = y.mean(0)
        sol = shifted_solves(_gram_matrix(x), y - my, a, tridiagonal)  # (alphas, n, k)
        w = _matmul(x.T, sol.permute(1, 0, 2).reshape(n, -1))  # Xcᵀ S: (dim, alphas * k)
        return RidgePath(mx, my, a, w.view(self.dim, len(a), self.k).permute(1, 0, 2).contiguous())


def _gram_matrix(x: torch.Tensor) -> torch.Tensor:
    """X Xᵀ of float64 rows; only its lower triangle is meant (all that :func:`shifted_solves` reads): BLAS
    ``dsyrk`` through SciPy (one triangle, half a matmul's work) on the CPU, else a matmul."""
    if x.device.type == "cpu" and len(x) > 1:
        from scipy.linalg import blas

        # xᵀ of C-ordered rows is Fortran-ordered: BLAS reads it without a copy
        return torch.from_numpy(blas.dsyrk(1.0, x.numpy().T, trans=1, lower=1))
    return x @ x.T


def _matmul(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """a @ b in float64: on the CPU through SciPy's BLAS ``dgemm``, the library that also runs ``dsyrk`` and
    ``dsytrd`` here (torch's float64 matmul is about half as fast; NumPy's own OpenBLAS is as fast alone,
    but its idle threads then compete with SciPy's: the demo's ridge took 7.11 s against 6.40 s, medians of
    5, ``docs/probes.md``), else torch. On the CPU it computes (a b)ᵀ = bᵀ aᵀ, whose Fortran-ordered result is
    a b in C order, from operands BLAS reads as they lie: no copy of C- or Fortran-ordered inputs or of the result."""
    if a.device.type == "cpu":
        from scipy.linalg import blas

        def transposed(m: np.ndarray) -> tuple[np.ndarray, int]:  # mᵀ for BLAS: a Fortran-ordered array, flag
            return (m.T, 0) if m.flags.c_contiguous else (m, 1)

        (bt, trans_b), (at, trans_a) = transposed(b.numpy()), transposed(a.numpy())
        return torch.from_numpy(blas.dgemm(1.0, bt, at, trans_a=trans_b, trans_b=trans_a).T)
    return a @ b


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

    def solve(self, alphas: torch.Tensor, tridiagonal: bool | None = None) -> RidgePath:
        """The solutions (centred XᵀX + alpha I)⁻¹ centred XᵀY (the intercept is not penalised, as in
        scikit-learn)."""
        n = max(self.n, 1)
        mx, my = self.sx / n, self.sy / n
        c = self.xx - n * torch.outer(mx, mx)
        cy = self.xy - n * torch.outer(mx, my)
        a = alphas.to(torch.float64)
        return RidgePath(mx, my, a, shifted_solves(c, cy, a, tridiagonal))


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
    a = torch.tensor([float(v) for v in alphas], dtype=torch.float64, device=device)
    paths = {}
    for kv in list(grams):
        paths[kv] = [g.solve(a) for g in grams.pop(kv)]  # the sums (or the dual form's rows) go as they are solved
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
                    s = torch.stack([p.predict(xv)[..., 0] for p in ps], 2)  # (alphas, rows, relations)
                    pred = (s.gather(2, rel.view(1, -1, 1).expand(len(a), -1, 1)).squeeze(2) > 0).long()
                else:
                    pred = decide(ps[0].predict(xv))
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
