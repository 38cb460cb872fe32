"""The seed's ``.pt`` format: ``{'features': Tensor (N, ...), 'labels': Tensor (N,), 'metadata': dict}``.

Exports are written beside the safetensors file; imports go through ``torch.load(weights_only=True)``
only, so a ``.pt`` file can never run code.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from . import format as fmt
from ._dtypes import TORCH_DTYPES, dtype_name
from .errors import CorruptFileError, FormatError

if TYPE_CHECKING:
    from .store import FeatureSet, FeatureStore

_IMPORT_CHUNK_BYTES = 64 << 20


def export_pt(fs: "FeatureSet", path: str | os.PathLike | None = None) -> Path:
    """Write ``fs`` as a seed-format ``.pt`` file (default: beside its safetensors file) and return the path.

    The features are saved straight from the mapped file (no private copy of the matrix); labels
    are included when the set has them. The file is written to a temp name and renamed.
    """
    fs._check_all_committed()
    target = Path(path) if path is not None else fs.path.with_suffix(".pt")
    metadata: dict[str, Any] = {
        "featstore_key": fs.key,
        "featstore_format_version": fmt.FORMAT_VERSION,
        "dtype": fs.record.dtype,
        **fs.metadata,
    }
    payload: dict[str, Any] = {"features": fs.to_torch()}
    if fs.labels is not None:
        payload["labels"] = fs.labels
    payload["metadata"] = metadata
    tmp = target.with_name(f".{target.name}.{os.getpid()}.tmp")
    target.parent.mkdir(parents=True, exist_ok=True)
    try:
        torch.save(payload, tmp)
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, target)
    finally:
        if tmp.exists():
            tmp.unlink()
    fmt.fsync_dir(target.parent)
    return target


def load_pt(path: str | os.PathLike) -> dict[str, Any]:
    """Load and validate a seed-format ``.pt`` file (weights only, memory-mapped)."""
    path = os.fspath(path)
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except FileNotFoundError:
        raise
    except Exception as exc:  # torch raises many types for bad archives; report them all the same way
        first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise CorruptFileError(
            f"{path}: not a weights-only .pt file featstore can read ({type(exc).__name__}: {first_line[:300]}); "
            "it must hold a dict of tensors saved with torch.save"
        ) from None
    if not isinstance(obj, dict):
        raise FormatError(f"{path}: holds a {type(obj).__name__}, expected a dict with 'features', 'labels', 'metadata'")
    features = obj.get("features")
    if not isinstance(features, torch.Tensor) or features.dim() < 1:
        raise FormatError(f"{path}: key 'features' must be a tensor of shape (N, ...), got {type(features).__name__}")
    try:
        dtype_name(features.dtype)
    except ValueError as exc:
        raise FormatError(f"{path}: key 'features': {exc}") from None
    declared = features.numel() * features.element_size()
    stored = features.untyped_storage().nbytes()
    if declared > stored:  # e.g. a stride-0 view declaring 2**40 rows over 16 stored bytes
        raise FormatError(
            f"{path}: key 'features' declares shape {tuple(features.shape)} ({declared} bytes) but its storage "
            f"holds {stored} bytes (a broadcast or expanded view); save a dense tensor (.contiguous())"
        )
    labels = obj.get("labels")
    if labels is not None:
        if not isinstance(labels, torch.Tensor) or labels.shape != (features.shape[0],):
            got = tuple(labels.shape) if isinstance(labels, torch.Tensor) else type(labels).__name__
            raise FormatError(f"{path}: key 'labels' must be a tensor of shape ({features.shape[0]},), got {got}")
        if labels.dtype.is_floating_point or labels.dtype.is_complex:
            raise FormatError(f"{path}: key 'labels' must hold integers, got {labels.dtype}")
    metadata = obj.get("metadata", {})
    if not isinstance(metadata, dict):
        raise FormatError(f"{path}: key 'metadata' must be a dict, got {type(metadata).__name__}")
    return {"features": features, "labels": labels, "metadata": metadata}


def import_pt(store: "FeatureStore", path, key: str, dtype=None, metadata: dict | None = None) -> "FeatureSet":
    """Import a seed-format ``.pt`` file as a finished feature set ``key`` (optionally cast to ``dtype``)."""
    obj = load_pt(path)
    features: torch.Tensor = obj["features"]
    target = dtype_name(dtype) if dtype is not None else dtype_name(features.dtype)
    meta = {**{k: v for k, v in obj["metadata"].items() if not str(k).startswith("featstore_")}, **(metadata or {})}
    meta.setdefault("imported_from", os.path.basename(os.fspath(path)))
    try:
        meta = _json_safe(meta)
    except TypeError as exc:
        raise FormatError(f"{path}: key 'metadata' holds values that are not JSON-like ({exc})") from None
    n = features.shape[0]
    labels = obj["labels"]
    writer = store.create_feature_set(
        key, n_rows=n, row_shape=tuple(features.shape[1:]), dtype=target, metadata=meta,
        labels=labels.to(torch.int64) if labels is not None else None,
    )
    row_bytes = max(1, features[0].numel() * features.element_size()) if n else 1
    chunk = max(1, _IMPORT_CHUNK_BYTES // row_bytes)
    with writer:
        for start in range(0, n, chunk):
            writer.write(start, features[start : start + chunk].to(TORCH_DTYPES[target]))
    return store[key]


def _json_safe(value):
    """Metadata from a .pt file as plain JSON types (tensors become lists), or TypeError."""
    if isinstance(value, dict):
        return {str(k): _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    if isinstance(value, torch.Tensor):
        return value.tolist() if value.numel() <= 1024 else f"<tensor {tuple(value.shape)} {value.dtype}>"
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    raise TypeError(f"{type(value).__name__} value {value!r:.80}")
