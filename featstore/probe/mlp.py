"""MLP probes: one hidden layer (ReLU) on one view of a set. Every (learning rate, weight decay) setting
is one slice of stacked tensors, so one batch serves them all, as the linear heads share theirs."""

from __future__ import annotations

import math

import torch

from .heads import adamw_leading, view_input

HIDDEN = 256


class MLPGroup:
    """The stacked one-hidden-layer heads of one view of one set: standardised input -> ``hidden`` ReLU
    units -> outputs, per head."""

    kind = "mlp"

    def __init__(self, view: str, dim: int, settings: list[tuple[float, float]], n_out: int, hidden: int = HIDDEN):
        self.view, self.dim, self.settings, self.n_out, self.hidden = view, dim, settings, n_out, hidden
        self.h = len(settings)

    @property
    def head_params(self) -> int:
        """Parameters of one head: both layers' weights and biases."""
        return self.dim * self.hidden + self.hidden + self.hidden * self.n_out + self.n_out

    def setup(self, device, mean: torch.Tensor, std: torch.Tensor) -> None:
        h, d, k = self.h, self.dim, self.hidden
        self.w1 = torch.nn.Parameter((torch.randn(h, d, k) * math.sqrt(2.0 / d)).to(device))  # seeded by the caller
        self.b1 = torch.nn.Parameter(torch.zeros(h, k, device=device))
        self.w2 = torch.nn.Parameter(torch.zeros(h, k, self.n_out, device=device))
        self.b2 = torch.nn.Parameter(torch.zeros(h, self.n_out, device=device))
        self.mean, self.inv_std = mean.to(device), (1.0 / std).to(device)
        self.lr = torch.tensor([lr for lr, _ in self.settings], device=device)
        self.wd = torch.tensor([wd for _, wd in self.settings], device=device)
        self.state = [(torch.zeros_like(p), torch.zeros_like(p)) for p in self.params()]
        self.step = 0

    def params(self) -> list[torch.nn.Parameter]:
        return [self.w1, self.b1, self.w2, self.b2]

    def inputs(self, x: torch.Tensor) -> torch.Tensor:
        return (view_input(x, self.view) - self.mean) * self.inv_std

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        """(rows, heads, outputs): every head's hidden layer, then its output layer."""
        hidden = torch.relu(torch.einsum("bd,hdk->bhk", x, self.w1) + self.b1)
        return torch.einsum("bhk,hko->bho", hidden, self.w2) + self.b2

    def update(self) -> None:
        adamw_leading(self)
