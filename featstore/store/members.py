"""The check that a feature set's file is exactly what its manifest entry says (tensors, dtype,
shape, header bytes, key and provenance), done before any row is read."""

from __future__ import annotations

import json
import zlib
from pathlib import Path

from ..errors import CorruptFileError, FormatError
from .header import Header, read_header
from .paths import resolve_member
from .record import FeatureSetRecord


def checked_header(root: Path, record: FeatureSetRecord) -> tuple[Path, Header, bytes]:
    """Resolve a feature set's file inside ``root`` and check its header against the manifest record."""
    where = f"feature set {record.key!r}"
    path = resolve_member(root, record.file, where)
    header, raw = _read_header_for(path, where)
    _check_header(path, record, header, raw)
    return path, header, raw


def _read_header_for(path: Path, where: str) -> tuple[Header, bytes]:
    try:
        return read_header(path)
    except FileNotFoundError:
        raise FormatError(
            f"{where}: its file {path} is missing; restore it, or remove the set "
            "(`featstore delete STORE KEY`, FeatureStore.delete)"
        ) from None


def _check_header(path: Path, record: FeatureSetRecord, header: Header, raw: bytes) -> None:
    """The file must hold exactly what the manifest says: same tensors, dtype, shape, header bytes."""
    expected = record.layout.tensors()
    for name, want in expected.items():
        got = header.tensors.get(name)
        if got is None:
            raise FormatError(f"{path}: has no tensor {name!r} but the manifest lists one")
        for field in ("dtype", "shape", "begin", "end"):
            if getattr(got, field) != getattr(want, field):
                raise FormatError(
                    f"{path}: tensor {name!r} has {field} {getattr(got, field)} but the manifest says {getattr(want, field)}"
                )
    extra = set(header.tensors) - set(expected)
    if extra:
        raise FormatError(f"{path}: holds tensors {sorted(extra)} that the manifest does not list")
    if zlib.crc32(raw) != record.header_crc32:
        raise CorruptFileError(f"{path}: header checksum mismatch for feature set {record.key!r}; the file is corrupt")
    # The header repeats the key and the provenance: a manifest damaged there (it has no checksum of
    # its own) is caught here instead of silently renaming the set or changing its metadata.
    key = header.metadata.get("featstore.key")
    if key != record.key:
        raise FormatError(
            f"{path}: holds feature set {key!r} but the manifest lists it as {record.key!r}; "
            "the manifest is damaged: restore it from a backup"
        )
    try:
        metadata = json.loads(header.metadata.get("featstore.metadata", "null"))
    except ValueError:
        metadata = None
    if metadata != record.metadata:
        raise FormatError(
            f"{path}: the provenance metadata in its header differs from the manifest's for feature set "
            f"{record.key!r}; the manifest is damaged: restore it from a backup"
        )
    quant = header.metadata.get("featstore.quant")
    expected_quant = (
        None if record.quant is None else json.dumps(record.quant.to_json(), sort_keys=True, separators=(",", ":"))
    )
    if quant != expected_quant:
        raise FormatError(
            f"{path}: its header says quantisation {quant} but the manifest says {expected_quant} for feature set "
            f"{record.key!r}; the manifest is damaged: restore it from a backup"
        )
