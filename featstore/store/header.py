"""The safetensors header featstore writes and accepts: dtypes, tensor entries, the layout of a
feature-set file, encoding and strict parsing.

Everything read from disk is untrusted: sizes are checked against the file before anything is
allocated, and every error names the file and the field.
"""

from __future__ import annotations

import json
import math
import os
import struct
from dataclasses import dataclass
from typing import Any

from ..errors import CorruptFileError, FormatError
from .files import is_nonneg_int, load_untrusted_json, open_regular_file, short_repr

FILE_FORMAT_VERSION = 1  # the layout of the .safetensors files and .pt exports; manifest version 2 left it as is
ALIGNMENT = 4096  # the data section (and so row 0 of "features") starts on this boundary
MAX_HEADER_BYTES = 100_000_000  # the same cap safetensors itself applies
MAX_TENSOR_BYTES = 1 << 62  # a shape needing more bytes than this (or any file could hold) is corrupt
FEATURES = "features"
LABELS = "labels"
SCALES = "scales"  # float32, one per last-axis vector of a quantised set (featstore.store.quant)
SCALES_DTYPE = "float32"
LABELS_DTYPE = "int64"
# featstore dtype name -> (safetensors code, bytes per element)
DTYPES: dict[str, tuple[str, int]] = {
    "float64": ("F64", 8),
    "float32": ("F32", 4),
    "float16": ("F16", 2),
    "bfloat16": ("BF16", 2),
    "int64": ("I64", 8),
    "int32": ("I32", 4),
    "int16": ("I16", 2),
    "int8": ("I8", 1),
    "uint8": ("U8", 1),
    "float8_e4m3": ("F8_E4M3", 1),
    "bool": ("BOOL", 1),
}


SAFETENSORS_CODES = {code: name for name, (code, _) in DTYPES.items()}


def itemsize(dtype: str) -> int:
    """Bytes per element of a featstore dtype name."""
    return DTYPES[dtype][1]


def check_dtype(dtype: str) -> str:
    """Return dtype if featstore can store it, else raise naming the supported ones."""
    if dtype not in DTYPES:
        raise ValueError(f"unsupported dtype {dtype!r}; use one of {', '.join(DTYPES)}")
    return dtype


@dataclass(frozen=True)
class TensorEntry:
    """One tensor of a safetensors file: dtype, shape and byte range relative to the data section."""

    dtype: str
    shape: tuple[int, ...]
    begin: int
    end: int


@dataclass(frozen=True)
class Header:
    """A parsed, validated safetensors header."""

    header_len: int
    tensors: dict[str, TensorEntry]
    metadata: dict[str, str]

    @property
    def data_start(self) -> int:
        return 8 + self.header_len


@dataclass(frozen=True)
class Layout:
    """Where a feature set's tensors live in its file, decided before the first row is written."""

    n_rows: int
    row_shape: tuple[int, ...]
    dtype: str
    has_labels: bool
    #: the quantisation scheme ("int8", "float8_e4m3") of a quantised set, whose file also holds "scales"
    quant: str | None = None

    @property
    def scale_count(self) -> int:
        """float32 scales per row: one per last-axis vector of a quantised set, else 0."""
        return math.prod(self.row_shape[:-1]) if self.quant is not None else 0

    @property
    def scales_bytes(self) -> int:
        return self.n_rows * self.scale_count * itemsize(SCALES_DTYPE)

    @property
    def scales_begin(self) -> int:
        """Where "scales" starts in the data section: after the features and the labels."""
        return self.features_bytes + self.labels_bytes

    @property
    def data_bytes(self) -> int:
        return self.features_bytes + self.labels_bytes + self.scales_bytes

    @property
    def row_bytes(self) -> int:
        return math.prod(self.row_shape) * itemsize(self.dtype)

    @property
    def features_bytes(self) -> int:
        return self.n_rows * self.row_bytes

    @property
    def labels_bytes(self) -> int:
        return self.n_rows * itemsize(LABELS_DTYPE) if self.has_labels else 0

    def tensors(self) -> dict[str, TensorEntry]:
        shape = (self.n_rows, *self.row_shape)
        out = {FEATURES: TensorEntry(self.dtype, shape, 0, self.features_bytes)}
        if self.has_labels:
            end = self.features_bytes + self.labels_bytes
            out[LABELS] = TensorEntry(LABELS_DTYPE, (self.n_rows,), self.features_bytes, end)
        if self.quant is not None:
            scales = (self.n_rows, *self.row_shape[:-1])
            out[SCALES] = TensorEntry(SCALES_DTYPE, scales, self.scales_begin, self.data_bytes)
        return out


def encode_header(tensors: dict[str, TensorEntry], metadata: dict[str, str]) -> bytes:
    """The 8-byte length plus JSON header, space-padded so the data section starts on ALIGNMENT.

    Deterministic for the same input (sorted keys, no timestamps): resumed and uninterrupted runs
    write identical bytes.
    """
    obj: dict[str, Any] = {"__metadata__": dict(sorted(metadata.items()))}
    for name, t in tensors.items():
        obj[name] = {
            "dtype": DTYPES[t.dtype][0],
            "shape": list(t.shape),
            "data_offsets": [t.begin, t.end],
        }
    body = json.dumps(obj, separators=(",", ":"), sort_keys=True, ensure_ascii=True).encode("utf-8")
    total = 8 + len(body)
    padded = -(-total // ALIGNMENT) * ALIGNMENT
    body += b" " * (padded - total)
    return struct.pack("<Q", len(body)) + body


def shape_nbytes(shape: list[int], item_bytes: int, where: str, error=FormatError) -> int:
    """Bytes a tensor of ``shape`` (non-negative ints) needs; raises ``error`` naming 'shape' when that
    exceeds MAX_TENSOR_BYTES. Stops multiplying as soon as the product is too big, so a header with
    thousands of huge dimensions costs no more than one with a few."""
    total = item_bytes
    for dim in shape:
        total *= dim
        if total > MAX_TENSOR_BYTES:
            if 0 in shape:
                return 0
            raise error(
                f"{where}: field 'shape' {short_repr(shape)} needs more than {MAX_TENSOR_BYTES} bytes; the file is corrupt"
            )
    return total


def parse_header(path: str, prefix: bytes, file_size: int) -> Header:
    """Validate a safetensors header read from the start of ``path``.

    ``prefix`` must hold at least the first ``8 + header_len`` bytes (use :func:`read_header`).
    Checks every rule safetensors checks plus featstore's: known dtypes, sizes that agree with
    shapes, tensors that tile the data section exactly with no gap, overlap or trailing bytes.
    """
    if file_size < 8 or len(prefix) < 8:
        raise CorruptFileError(f"{path}: file is {file_size} bytes, too short for a safetensors header; re-create it")
    (header_len,) = struct.unpack("<Q", prefix[:8])
    if header_len > MAX_HEADER_BYTES:
        raise CorruptFileError(
            f"{path}: header length field says {header_len} bytes (limit {MAX_HEADER_BYTES}); the file is corrupt"
        )
    if 8 + header_len > file_size:
        raise CorruptFileError(
            f"{path}: header length field says {header_len} bytes but the file has only {file_size - 8} after it; "
            "the file is truncated or corrupt"
        )
    raw = prefix[8 : 8 + header_len]
    if len(raw) != header_len:
        raise CorruptFileError(f"{path}: could not read the {header_len}-byte header; the file is truncated")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise CorruptFileError(f"{path}: header is not valid UTF-8 (byte {exc.start}); the file is corrupt") from None
    if not text.startswith("{"):
        raise CorruptFileError(f"{path}: header does not start with '{{'; not a safetensors file")
    obj = load_untrusted_json(text, path, "header")
    if not isinstance(obj, dict):
        raise CorruptFileError(f"{path}: header is not a JSON object")

    metadata = obj.pop("__metadata__", {})
    if not isinstance(metadata, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in metadata.items()
    ):
        raise CorruptFileError(f"{path}: header field '__metadata__' must map strings to strings")

    tensors: dict[str, TensorEntry] = {}
    for name, entry in obj.items():
        where = f"{path}: tensor {name!r}"
        if not isinstance(entry, dict):
            raise CorruptFileError(f"{where} is not a JSON object")
        code = entry.get("dtype")
        if not isinstance(code, str) or code not in SAFETENSORS_CODES:
            raise CorruptFileError(
                f"{where}: unknown dtype {short_repr(code)}; featstore reads {', '.join(SAFETENSORS_CODES)}"
            )
        dtype = SAFETENSORS_CODES[code]
        shape = entry.get("shape")
        if not isinstance(shape, list) or not all(is_nonneg_int(d) for d in shape):
            raise CorruptFileError(f"{where}: 'shape' must be a list of non-negative integers, got {short_repr(shape)}")
        offsets = entry.get("data_offsets")
        if not isinstance(offsets, list) or len(offsets) != 2 or not all(is_nonneg_int(o) for o in offsets):
            raise CorruptFileError(f"{where}: 'data_offsets' must be [begin, end] integers, got {short_repr(offsets)}")
        begin, end = offsets
        if begin > end:
            raise CorruptFileError(f"{where}: 'data_offsets' begin {begin} is after end {end}")
        nbytes = shape_nbytes(shape, itemsize(dtype), where, CorruptFileError)
        if end - begin != nbytes:
            raise CorruptFileError(
                f"{where}: 'data_offsets' span {end - begin} bytes but shape {short_repr(shape)} of {dtype} needs {nbytes}"
            )
        tensors[name] = TensorEntry(dtype, tuple(shape), begin, end)

    data_len = file_size - 8 - header_len
    position = 0
    for name, t in sorted(tensors.items(), key=lambda kv: (kv[1].begin, kv[1].end)):
        if t.begin != position:
            kind = "overlaps the previous tensor" if t.begin < position else "leaves a gap before it"
            raise CorruptFileError(f"{path}: tensor {name!r} starts at {t.begin}, which {kind} (expected {position})")
        position = t.end
    if position != data_len:
        what = "is truncated" if position > data_len else "has trailing bytes"
        raise CorruptFileError(
            f"{path}: tensors cover {position} data bytes but the file holds {data_len}: the file {what}"
        )
    return Header(header_len, tensors, metadata)


def read_header(path: str | os.PathLike) -> tuple[Header, bytes]:
    """Read and validate the header of a safetensors file; returns it and its raw bytes (for checksums)."""
    path = os.fspath(path)
    with open_regular_file(path, "a feature-set file") as f:
        size = os.fstat(f.fileno()).st_size
        first = f.read(8)
        if len(first) < 8:
            parse_header(path, first, size)  # raises the 'too short' error
        (header_len,) = struct.unpack("<Q", first)
        if header_len > MAX_HEADER_BYTES or 8 + header_len > size:
            parse_header(path, first, size)  # raises before any allocation sized by header_len
        prefix = first + f.read(header_len)
    return parse_header(path, prefix, size), prefix
