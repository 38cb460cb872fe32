"""Mapping between featstore dtype names, torch dtypes and raw byte views of arrays."""

from __future__ import annotations

import numpy as np
import torch

TORCH_DTYPES: dict[str, torch.dtype] = {
    "float64": torch.float64,
    "float32": torch.float32,
    "float16": torch.float16,
    "bfloat16": torch.bfloat16,
    "int64": torch.int64,
    "int32": torch.int32,
    "int16": torch.int16,
    "int8": torch.int8,
    "uint8": torch.uint8,
    "bool": torch.bool,
    "float8_e4m3": torch.float8_e4m3fn,
}
NAMES = {v: k for k, v in TORCH_DTYPES.items()}


def dtype_name(dtype) -> str:
    """The featstore name of a torch dtype, numpy dtype or name string."""
    if isinstance(dtype, torch.dtype):
        if dtype not in NAMES:
            raise ValueError(f"unsupported dtype {dtype}; use one of {', '.join(TORCH_DTYPES)}")
        return NAMES[dtype]
    if isinstance(dtype, str) and dtype in TORCH_DTYPES:
        return dtype
    try:
        name = np.dtype(dtype).name
    except TypeError:
        name = str(dtype)
    if name not in TORCH_DTYPES:
        raise ValueError(f"unsupported dtype {dtype!r}; use one of {', '.join(TORCH_DTYPES)}")
    return name


def as_tensor(rows) -> torch.Tensor:
    """A CPU torch view (no copy where possible) of a tensor, numpy array or nested list."""
    if isinstance(rows, torch.Tensor):
        return rows.detach()
    if isinstance(rows, np.ndarray):
        return torch.from_numpy(rows)
    return torch.as_tensor(np.asarray(rows))


def byte_view(t: torch.Tensor) -> memoryview:
    """The bytes of a contiguous CPU tensor as a flat memoryview (works for bfloat16 too)."""
    if t.numel() == 0:
        return memoryview(b"")
    return t.reshape(-1).view(torch.uint8).numpy().data.cast("B")
