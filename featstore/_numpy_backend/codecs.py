"""The numpy fallback's codecs for quantised rows: float8 e4m3 values, bfloat16 rounding, the output dtypes
(the compiled core's dequant.cpp, in numpy; the same bits)."""

from __future__ import annotations

import numpy as np


def _e4m3_table() -> np.ndarray:
    codes = np.arange(256)
    sign = np.where(codes >> 7, -1.0, 1.0)
    exp, man = (codes >> 3) & 15, codes & 7
    value = np.where(exp == 0, np.ldexp(man.astype(np.float64), -9), np.ldexp(1.0 + man / 8.0, exp - 7))
    value = np.where((exp == 15) & (man == 7), np.nan, value)
    return (sign * value).astype(np.float32)


E4M3_VALUES = _e4m3_table()  # the float32 value of each float8 e4m3fn code
OUT_ITEM = {"float32": 4, "float16": 2, "bfloat16": 2}  # bytes of an element of each output dtype


def to_bfloat16_bits(x: np.ndarray) -> np.ndarray:
    """float32 -> bfloat16 bits, nearest even; NaN stays a quiet NaN (as the compiled core)."""
    u = x.view(np.uint32)
    rounded = ((u + np.uint32(0x7FFF) + ((u >> np.uint32(16)) & np.uint32(1))) >> np.uint32(16)).astype(np.uint16)
    nan = (u & np.uint32(0x7FFFFFFF)) > np.uint32(0x7F800000)
    return np.where(nan, ((u >> np.uint32(16)) | np.uint32(0x40)).astype(np.uint16), rounded)


def check_codec(scheme: str, out_dtype: str) -> int:
    """Bytes of an element of ``out_dtype``; ValueError (the core's message) for an unknown scheme or dtype."""
    if scheme not in ("int8", "float8_e4m3"):
        raise ValueError(f"scheme must be 'int8' or 'float8_e4m3', got '{scheme}'")
    if out_dtype not in OUT_ITEM:
        raise ValueError(f"out_dtype must be 'float16', 'bfloat16' or 'float32', got '{out_dtype}'")
    return OUT_ITEM[out_dtype]
