"""Convert the feature sets of a store into a new store of another dtype, e.g. compact int8 or
float8 (featstore.store.quant), or back to float16. Rows stream in chunks of bounded size; each new set
carries its source's provenance and records the conversion in its metadata (``conversions``)."""

from __future__ import annotations

import os
import time
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .._dtypes import TORCH_DTYPES
from .feature_set import FeatureSet
from .header import check_dtype
from .quant import LOGICAL_DTYPES, SCHEMES, stored_as
from .store import FeatureStore

CHUNK_BYTES = 64 << 20  # of rows as gathered (the source's logical dtype)


def _version() -> str:
    try:
        return version("featstore")
    except PackageNotFoundError:
        return "unknown"


def check_destination(src: Path, dst: Path) -> None:
    """Refuse DST == SRC (or one inside the other) and an existing non-empty DST (FileExistsError)."""
    s, d = src.resolve(), dst.resolve()
    if s == d or s in d.parents or d in s.parents:
        raise ValueError(f"{dst}: the destination must be a new store apart from the source {src}; give another folder")
    if d.exists() and (not d.is_dir() or any(d.iterdir())):
        raise FileExistsError(f"{dst} exists and is not an empty folder; give a new folder for the converted store")


def conversion_record(fs: FeatureSet, src: Path, dtype: str, scheme: str | None) -> dict[str, Any]:
    """What ``conversions`` in the new set's metadata says about this conversion."""
    entry = fs.record.to_json()["checksum"]
    return {
        "source_store": str(src.resolve()),
        "source_key": fs.key,
        "source_dtype": fs.record.dtype,
        "source_quant": fs.quant.to_json() if fs.quant is not None else None,
        "source_checksum": {"algorithm": entry["algorithm"], "entry": entry["entry"], "header": entry["header"]},
        "dtype": dtype,
        "scheme": scheme,
        "featstore_version": _version(),
        "time": time.time(),
    }


def convert_set(fs: FeatureSet, dst: FeatureStore, store_dtype: str, src: Path, chunk_bytes: int | None = None) -> None:
    """Write ``fs`` into ``dst`` under the same key as ``store_dtype`` (a dtype, or "int8" / "float8_e4m3"
    for a quantised set of the source's logical dtype, float16 when that is not a float)."""
    fs.check_all_committed()
    source = dtype_name_of(fs)
    logical = source if source in LOGICAL_DTYPES else "float16"
    dtype, scheme = stored_as(store_dtype, logical)
    metadata = dict(fs.metadata)
    metadata["conversions"] = [*metadata.get("conversions", []), conversion_record(fs, src, store_dtype, scheme)]
    labels = fs.labels
    writer = dst.create_feature_set(
        fs.key,
        len(fs),
        fs.row_shape,
        dtype,
        metadata=metadata,
        labels=labels.numpy() if labels is not None else None,
        quant=scheme,
    )
    target = TORCH_DTYPES[dtype]
    gather_dtype = target if fs.quant is None or target in (torch.float16, torch.bfloat16, torch.float32) else None
    row_bytes = max(1, int(np.prod(fs.row_shape, dtype=np.int64)) * 4)
    chunk = max(1, (chunk_bytes or CHUNK_BYTES) // row_bytes)
    with writer:
        for start in range(0, len(fs), chunk):
            rows = np.arange(start, min(len(fs), start + chunk), dtype=np.int64)
            if gather_dtype is not None:
                block = fs.gather(rows, dtype=gather_dtype)
            else:
                block = fs.gather(rows, dtype=torch.float32).to(target)
            writer.write(start, block)
            writer.commit()


def dtype_name_of(fs: FeatureSet) -> str:
    return fs.quant.dtype if fs.quant is not None else fs.record.dtype


def convert_store(
    src: str | os.PathLike, dst: str | os.PathLike, dtype: str, keys: list[str] | None = None
) -> FeatureStore:
    """Convert the sets ``keys`` (default: every complete set) of the store ``src`` into a new store
    ``dst`` as ``dtype``: "int8" or "float8_e4m3" (compact, docs/compact-storage.md), or a plain dtype
    such as "float16" (a quantised source is dequantised). Returns the new store."""
    if dtype not in SCHEMES:
        check_dtype(dtype)
    src_path, dst_path = Path(src), Path(dst)
    source = FeatureStore.open(src_path)
    check_destination(src_path, dst_path)
    wanted = keys or source.keys(complete_only=True)
    sets = [source[key] for key in wanted]  # every key checked before anything is written
    for fs in sets:
        fs.check_all_committed()
    dst_path.mkdir(parents=True, exist_ok=True)
    target = FeatureStore.create(dst_path)
    for fs in sets:
        convert_set(fs, target, dtype, src_path)
    return target.refresh()
