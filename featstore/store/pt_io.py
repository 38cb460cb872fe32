"""The ``.pt`` export format (the seed's layout): ``{'features': Tensor (N, ...), 'labels': Tensor (N,), 'metadata': dict}``.

Exports are written beside the safetensors file (``FeatureSet.export_pt``); imports
(``FeatureStore.import_pt``) go through ``torch.load(weights_only=True)`` only, so a ``.pt`` file can
never run code.
"""

from __future__ import annotations

import os
import zipfile
from pathlib import Path
from typing import Any

import torch

from .._dtypes import dtype_name
from ..errors import CorruptFileError, FormatError
from .files import fsync_dir


def write_pt(
    target: str | os.PathLike, features: torch.Tensor, labels: torch.Tensor | None, metadata: dict[str, Any]
) -> None:
    """Write a ``.pt`` export durably: a temp name, fsync, rename, fsync of the folder."""
    target = Path(target)
    payload: dict[str, Any] = {"features": features}
    if labels is not None:
        payload["labels"] = labels
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
    fsync_dir(target.parent)


def load_pt(path: str | os.PathLike) -> dict[str, Any]:
    """Load and validate a file in the ``.pt`` export format (weights only, memory-mapped)."""
    path = os.fspath(path)
    if os.path.isfile(path) and not zipfile.is_zipfile(path):
        raise CorruptFileError(
            f"{path}: not a weights-only .pt file featstore can read (it is not a zip archive, which "
            "torch.save writes); give a file written by torch.save or `featstore export-pt`"
        )
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
        raise FormatError(
            f"{path}: holds a {type(obj).__name__}, expected a dict with 'features', 'labels', 'metadata'"
        )
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


def import_metadata(path: str | os.PathLike, loaded: dict[str, Any], extra: dict | None) -> dict[str, Any]:
    """The manifest metadata of a set imported from ``path``: the file's own (less featstore's keys),
    then ``extra``, as plain JSON values."""
    meta = {**{k: v for k, v in loaded["metadata"].items() if not str(k).startswith("featstore_")}, **(extra or {})}
    meta.setdefault("imported_from", os.path.basename(os.fspath(path)))
    try:
        return _json_safe(meta)
    except TypeError as exc:
        raise FormatError(f"{path}: key 'metadata' holds values that are not JSON-like ({exc})") from None


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
