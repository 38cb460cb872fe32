"""Attentive probes on patch grids (SpaRRTa's attention-pooled and multi-query probes): a few learned
queries attend over the grid's tokens, the pooled tokens feed a linear layer. Every (learning rate,
weight decay) setting of one set is one slice of stacked tensors, so one batch serves them all."""

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

    def __init__(self, dim: int, settings: list[tuple[float, float]], n_out: int, n_queries: int = N_QUERIES):
        self.dim, self.settings, self.n_out, self.n_queries = dim, settings, n_out, n_queries
        self.h = len(settings)

    @property
    def head_params(self) -> int:
        """Parameters of one head: its queries, the output layer's weights and biases."""
        q, d = self.n_queries, self.dim
        return q * d + q * d * self.n_out + self.n_out

    def setup(self, device, mean: torch.Tensor, std: torch.Tensor) -> None:
        h, q, d = self.h, self.n_queries, self.dim
        self.queries = torch.nn.Parameter(torch.randn(h, q, d).to(device))  # seeded by the caller
        self.weight = torch.nn.Parameter(torch.zeros(h, q * d, self.n_out, device=device))
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
        """(rows, heads, outputs): attention of every head's queries over the tokens, then its linear layer."""
        attn = (torch.einsum("btd,hqd->bhqt", x, self.queries) * self.scale).softmax(-1)
        pooled = torch.einsum("bhqt,btd->bhqd", attn, x).flatten(2)
        return torch.einsum("bhf,hfo->bho", pooled, self.weight) + self.bias

    def update(self) -> None:
        adamw_leading(self)
