"""Compact storage: symmetric int8 or float8 (e4m3) codes with one float32 scale per vector.

A quantised feature set stores tensor "features" as one-byte codes and tensor "scales" of shape
``(N, *row_shape[:-1])``: one scale per vector along the last axis, i.e. per row for pooled vectors
``(N, D)`` and per token for patch grids ``(N, T, D)`` (docs/compact-storage.md says why). A code
decodes as ``float32(code) * scale``, then is rounded (nearest even) to the output dtype.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

#: scheme -> (featstore dtype of the codes, largest code magnitude)
SCHEMES: dict[str, tuple[str, float]] = {"int8": ("int8", 127.0), "float8_e4m3": ("float8_e4m3", 448.0)}
#: the dtypes a quantised set can come from, and that its gathers can return
LOGICAL_DTYPES = ("float16", "bfloat16", "float32")


@dataclass(frozen=True)
class Quant:
    """How a feature set is quantised: ``scheme`` (a key of SCHEMES) and ``dtype``, the logical dtype of
    its values (what gathers return by default)."""

    scheme: str
    dtype: str

    @property
    def storage_dtype(self) -> str:
        return SCHEMES[self.scheme][0]

    def to_json(self) -> dict[str, str]:
        return {"scheme": self.scheme, "dtype": self.dtype, "scales": "vector"}


def stored_as(store_dtype: str, logical: str = "float16") -> tuple[str, str | None]:
    """What a command-line store dtype means: ``(dtype of the rows written, scheme or None)``. The names
    of the schemes ("int8", "float8_e4m3") mean rows of ``logical`` quantised; any other name is stored raw."""
    return (logical, store_dtype) if store_dtype in SCHEMES else (store_dtype, None)


def check_quant(scheme: str, dtype: str, row_shape: tuple[int, ...], key: str) -> Quant:
    """The Quant of a new set, or ValueError naming what to change."""
    if scheme not in SCHEMES:
        raise ValueError(f"feature set {key!r}: unknown quantisation {scheme!r}; use one of {', '.join(SCHEMES)}")
    if dtype not in LOGICAL_DTYPES:
        raise ValueError(
            f"feature set {key!r}: only {', '.join(LOGICAL_DTYPES)} rows can be quantised, got {dtype}; "
            "pass dtype='float16' (or bfloat16, float32)"
        )
    if not row_shape:
        raise ValueError(f"feature set {key!r}: quantised rows need at least one axis (row_shape is ())")
    return Quant(scheme, dtype)


def scales_shape(n_rows: int, row_shape: tuple[int, ...]) -> tuple[int, ...]:
    """Shape of the "scales" tensor: one float32 per vector along the last axis."""
    return (n_rows, *row_shape[:-1])


def group_elems(row_shape: tuple[int, ...]) -> int:
    """Elements that share one scale (the size of the last axis)."""
    return row_shape[-1] if row_shape else 1


def quantise(rows: torch.Tensor, scheme: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Codes (int8 or float8_e4m3fn, the shape of ``rows``) and float32 scales (``rows.shape[:-1]``).

    Symmetric: scale = amax / 127 (int8) or amax / 448 (e4m3) over each last-axis vector, computed in
    float32; code = round(x / scale) clamped to the code range (e4m3 rounds to its nearest code).
    An all-zero vector gets scale 0 and codes 0. Values must be finite (ValueError otherwise)."""
    x = rows.detach().to(torch.float32)
    if x.numel() and not bool(torch.isfinite(x).all()):
        raise ValueError("rows to quantise hold NaN or infinite values; only finite features can be quantised")
    qmax = SCHEMES[scheme][1]
    amax = x.abs().amax(dim=-1) if x.shape[-1] else torch.zeros(x.shape[:-1])
    scales = amax / qmax
    safe = torch.where(scales > 0, scales, torch.ones_like(scales)).unsqueeze(-1)
    y = (x / safe).clamp_(-qmax, qmax)
    if scheme == "int8":
        codes = torch.round(y).to(torch.int8)  # torch.round: half to even
    else:
        codes = y.to(torch.float8_e4m3fn)
    return codes, scales.contiguous()


def error_bound(scheme: str, x: torch.Tensor, scales: torch.Tensor) -> torch.Tensor:
    """The largest |x - x̂| the scheme allows per element (before rounding to the output dtype):
    scale/2 for int8; for e4m3 half a step of 3 mantissa bits (|x|·2^-4), at least the subnormal
    half-step scale·2^-10."""
    s = scales.unsqueeze(-1).to(torch.float32)
    if scheme == "int8":
        return s / 2
    return torch.maximum(x.abs().to(torch.float32) * 2.0**-4, s * 2.0**-10)
