"""Attentive probes on patch grids (SpaRRTa's attention-pooled and multi-query probes): a few learned
queries attend over the grid's tokens (the standardised tokens themselves are keys and values: no key or
value projection), and one linear classifier reads the pooled tokens. Every (learning rate, weight decay)
setting of one set is one slice of stacked tensors, so one batch serves them all.

Parameters, per head: the queries (Q x D), Q weights mixing their pooled tokens, one classifier D x C shared
by the queries (it reads the mix), (Q x 2) x C weights on where each query looked and C biases:
Q·D + Q + D·C + 2·Q·C + C, against a flat linear head's T·D·C + C on a grid of T tokens (at least 10x more
on every patch grid of the demo: see docs/probes.md).

Attention pooling is blind to token order: a pooled token knows where it came from only through what
the encoder wrote into it. So each token's value carries its fixed grid coordinates (row and column in
[-1, 1]; no parameters), and the pooled coordinates say where a query looked, as a flat linear head
knows each token's place by its weight's index. Without them the probe was at chance (0.26 on the demo's
dinov2/layer_0/patch) on the random-init encoders, whose tokens keep little of their position; with them
see benchmarks/results/probes-demo.md."""

from __future__ import annotations

import math

import torch

from .heads import adamw_leading, view_input

MAX_QUERIES = 4  # queries per head at most: a multi-query probe; 1 is the attention-pooled probe
SMALLER = 10  # the head is to be at least this many times smaller than a flat linear head on the grid


def head_size(queries: int, dim: int, n_out: int, coords: int = 2) -> int:
    """Parameters of one attentive head: queries, their mix, the shared classifier, coordinate weights, biases."""
    return queries * dim + queries + dim * n_out + queries * coords * n_out + n_out


def queries_for(tokens: int, dim: int, n_out: int) -> int:
    """Queries of a head over a grid of ``tokens`` x ``dim``: the most of 4, 2, 1 that keeps the head ``SMALLER``
    times smaller than a flat linear head (tokens·dim·n_out + n_out), else 4 (a grid too small for that with
    any head). The demo's 7x7 and 8x8 x 64 grids get 4, Qwen's 4x4 x 96 visual features 2."""
    flat = tokens * dim * n_out + n_out
    coords = 2 if math.isqrt(tokens) ** 2 == tokens and tokens > 1 else 1
    fit = [q for q in (MAX_QUERIES, 2, 1) if SMALLER * head_size(q, dim, n_out, coords) <= flat]
    return fit[0] if fit else MAX_QUERIES


class AttentiveGroup:
    """The stacked attentive heads of one patch-grid set: per head, ``queries`` (Q, D) attend over the
    standardised tokens (softmax of query . token / sqrt(D) over the grid); a classifier (D, outputs) shared
    by the queries maps a learned mix (Q weights) of their pooled tokens, and (Q x coordinates, outputs) weights map each
    query's pooled grid coordinates, to the outputs."""

    kind = "attentive"
    view = "grid"

    def __init__(
        self, dim: int, settings: list[tuple[float, float]], n_out: int, tokens: int, n_queries: int | None = None
    ):
        self.dim, self.settings, self.n_out = dim, settings, n_out
        self.n_queries = queries_for(tokens, dim, n_out) if n_queries is None else n_queries
        self.h = len(settings)
        self.coords = grid_coordinates(tokens)

    @property
    def head_params(self) -> int:
        """Parameters of one head: its queries, the shared classifier, the coordinate weights and the biases."""
        return head_size(self.n_queries, self.dim, self.n_out, self.coords.shape[1])

    def setup(self, device, mean: torch.Tensor, std: torch.Tensor) -> None:
        h, q, d = self.h, self.n_queries, self.dim
        self.queries = torch.nn.Parameter(torch.randn(h, q, d).to(device))  # seeded by the caller
        self.coords = self.coords.to(device)
        self.mix = torch.nn.Parameter(torch.full((h, q), 1.0 / q, device=device))  # each query's share
        self.weight = torch.nn.Parameter(torch.zeros(h, d, self.n_out, device=device))
        self.coord_weight = torch.nn.Parameter(torch.zeros(h, q * self.coords.shape[1], self.n_out, device=device))
        self.bias = torch.nn.Parameter(torch.zeros(h, self.n_out, device=device))
        self.mean, self.inv_std = mean.to(device), (1.0 / std).to(device)
        self.scale = 1.0 / math.sqrt(d)
        self.lr = torch.tensor([lr for lr, _ in self.settings], device=device)
        self.wd = torch.tensor([wd for _, wd in self.settings], device=device)
        self.state = [(torch.zeros_like(p), torch.zeros_like(p)) for p in self.params()]
        self.step = 0

    def params(self) -> list[torch.nn.Parameter]:
        return [self.queries, self.mix, self.weight, self.coord_weight, self.bias]

    def inputs(self, x: torch.Tensor) -> torch.Tensor:
        """The grid (rows, tokens, D), each token standardised with the train tokens' statistics."""
        return (view_input(x, self.view) - self.mean) * self.inv_std

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        """(rows, heads, outputs): attention of every head's queries over the tokens, then its shared
        classifier on a learned mix of the queries' pooled tokens plus its weights on each query's pooled coordinates."""
        attn = (torch.einsum("btd,hqd->bhqt", x, self.queries) * self.scale).softmax(-1)
        pooled = torch.einsum("bhqt,hq,btd->bhd", attn, self.mix, x)  # the queries' pooled tokens, mixed
        where = torch.einsum("bhqt,tc->bhqc", attn, self.coords).flatten(2)
        feats = torch.einsum("bhd,hdo->bho", pooled, self.weight)
        return feats + torch.einsum("bhf,hfo->bho", where, self.coord_weight) + self.bias

    def update(self) -> None:
        adamw_leading(self)


def grid_coordinates(tokens: int) -> torch.Tensor:
    """(tokens, 2) row and column of each token of a square grid, in [-1, 1], row-major; a grid that is not
    square (its height and width are not stored) gets one column, the token's index scaled to [-1, 1]."""
    side = math.isqrt(tokens)
    if side * side == tokens and side > 1:
        g = torch.linspace(-1.0, 1.0, side)
        return torch.stack(torch.meshgrid(g, g, indexing="ij"), -1).reshape(tokens, 2)
    return torch.linspace(-1.0, 1.0, tokens).view(tokens, 1)
