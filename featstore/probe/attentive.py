"""Attentive probes on patch grids (SpaRRTa's attention-pooled and multi-query probes): a few learned
queries attend over the grid's tokens, the pooled tokens feed a linear layer. Every (learning rate,
weight decay) setting of one set is one slice of stacked tensors, so one batch serves them all.

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

N_QUERIES = 4  # queries per head: a multi-query probe; 1 is the attention-pooled probe


class AttentiveGroup:
    """The stacked attentive heads of one patch-grid set: per head, ``queries`` (Q, D) attend over the
    standardised tokens (softmax of query . token / sqrt(D) over the grid), and a linear layer maps the
    Q pooled tokens to the outputs."""

    kind = "attentive"
    view = "grid"

    def __init__(
        self, dim: int, settings: list[tuple[float, float]], n_out: int, tokens: int, n_queries: int = N_QUERIES
    ):
        self.dim, self.settings, self.n_out, self.n_queries = dim, settings, n_out, n_queries
        self.h = len(settings)
        self.coords = grid_coordinates(tokens)

    @property
    def head_params(self) -> int:
        """Parameters of one head: its queries, the output layer's weights and biases."""
        q, d, c = self.n_queries, self.dim, self.coords.shape[1]
        return q * d + q * (d + c) * self.n_out + self.n_out

    def setup(self, device, mean: torch.Tensor, std: torch.Tensor) -> None:
        h, q, d = self.h, self.n_queries, self.dim
        self.queries = torch.nn.Parameter(torch.randn(h, q, d).to(device))  # seeded by the caller
        self.coords = self.coords.to(device)
        width = q * (d + self.coords.shape[1])
        self.weight = torch.nn.Parameter(torch.zeros(h, width, self.n_out, device=device))
        self.bias = torch.nn.Parameter(torch.zeros(h, self.n_out, device=device))
        self.mean, self.inv_std = mean.to(device), (1.0 / std).to(device)
        self.scale = 1.0 / math.sqrt(d)
        self.lr = torch.tensor([lr for lr, _ in self.settings], device=device)
        self.wd = torch.tensor([wd for _, wd in self.settings], device=device)
        self.state = [(torch.zeros_like(p), torch.zeros_like(p)) for p in self.params()]
        self.step = 0

    def params(self) -> list[torch.nn.Parameter]:
        return [self.queries, self.weight, self.bias]

    def inputs(self, x: torch.Tensor) -> torch.Tensor:
        """The grid (rows, tokens, D), each token standardised with the train tokens' statistics."""
        return (view_input(x, self.view) - self.mean) * self.inv_std

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        """(rows, heads, outputs): attention of every head's queries over the tokens, then its linear layer
        on the pooled tokens and their pooled grid coordinates."""
        attn = (torch.einsum("btd,hqd->bhqt", x, self.queries) * self.scale).softmax(-1)
        values = torch.cat([x, self.coords.expand(len(x), -1, -1)], -1)
        pooled = torch.einsum("bhqt,btd->bhqd", attn, values).flatten(2)
        return torch.einsum("bhf,hfo->bho", pooled, self.weight) + self.bias

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
