"""Recompute a store's checksums (header, every complete row block, labels) and name what is damaged."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from ..errors import FeatureStoreError, VerificationError
from .checksums import block_crc32, crc32_file_range, file_crc32
from .manifest import MANIFEST_NAME
from .members import checked_header
from .record import FeatureSetRecord


def verify_record(root: Path, record: FeatureSetRecord) -> tuple[list[str], int, int]:
    """Problems found in one feature set, bytes checked, committed rows no checksum covers yet."""
    try:
        path, header, raw = checked_header(root, record)
    except FeatureStoreError as exc:
        return [f"{record.key}: {exc}"], 0, 0
    problems: list[str] = []
    if record.entry_damaged:
        problems.append(
            f"{record.key}: its entry in {root / MANIFEST_NAME} fails its checksum (a field such as created_at "
            "was changed or damaged); restore featstore.json from a backup, or delete the set and write it again"
        )
    checked = len(raw)
    covered_rows = 0
    rb = record.layout.row_bytes
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        for block, crc in enumerate(record.block_crc32):
            if crc is None:
                continue
            lo, hi = block * record.block_rows, min(record.n_rows, (block + 1) * record.block_rows)
            covered_rows += hi - lo
            checked += (hi - lo) * (rb + record.layout.scale_count * 4)
            if block_crc32(fd, header.data_start, record.layout, lo, hi) != crc:
                problems.append(f"{record.key}: rows {lo}..{hi} of {path} fail their checksum; the data is corrupt")
        if record.labels_crc32 is not None:
            n = record.layout.labels_bytes
            checked += n
            start = header.data_start + record.layout.features_bytes
            if crc32_file_range(fd, start, n) != record.labels_crc32:
                problems.append(f"{record.key}: labels in {path} fail their checksum; the data is corrupt")
    finally:
        os.close(fd)
    export = path.with_suffix(".pt")
    if record.export_crc32 is not None and export.is_file():  # a deleted export is no damage
        crc, size = file_crc32(export)
        checked += size
        if (crc, size) != (record.export_crc32, record.export_bytes):
            problems.append(
                f"{record.key}: its .pt export {export} fails its checksum (changed or damaged since featstore "
                "wrote it); write it again with `featstore export-pt STORE KEY` (or rerun the extraction)"
            )
    return problems, checked, record.rows_committed - covered_rows


def verify_records(root: Path, records: list[FeatureSetRecord]) -> dict[str, Any]:
    """Verify the feature sets of ``records`` in the store ``root``; returns a summary, or raises
    VerificationError listing every problem."""
    problems: list[str] = []
    checked = unchecked = 0
    for record in records:
        found, n_bytes, n_unchecked = verify_record(root, record)
        problems += found
        checked += n_bytes
        unchecked += n_unchecked
    if problems:
        damaged = sorted({p.split(":", 1)[0] for p in problems})
        raise VerificationError(
            f"{root}: {len(damaged)} feature set(s) failed verification: {', '.join(damaged)}\n  "
            + "\n  ".join(problems),
            problems,
        )
    return {"feature_sets": len(records), "bytes_checked": checked, "rows_without_checksum": unchecked}
