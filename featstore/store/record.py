"""One manifest entry: what ``featstore.json`` says about a feature set, validated field by field.

A manifest is untrusted input. Every field is checked for type and range, and every error names the
manifest, the feature set and the field.
"""

from __future__ import annotations

import json
import zlib
from dataclasses import dataclass, field
from typing import Any

from ..errors import FormatError
from .files import is_nonneg_int, short_repr
from .header import DTYPES, Layout, itemsize, shape_nbytes
from .paths import check_key, check_member_path
from .quant import LOGICAL_DTYPES, SCHEMES, Quant

CHECKSUM_ALGORITHM = "crc32"
ENTRY_FIELDS = frozenset(
    {
        "file",
        "dtype",
        "shape",
        "labels",
        "rows_committed",
        "committed",
        "complete",
        "checksum",
        "metadata",
        "created_at",
        "finished_at",
        "quant",
    }
)
QUANT_FIELDS = frozenset({"scheme", "dtype", "scales"})
CHECKSUM_FIELDS = frozenset({"algorithm", "block_rows", "blocks", "labels", "header", "export", "entry"})
EXPORT_FIELDS = frozenset({"crc32", "bytes"})


def entry_crc32(entry: dict[str, Any]) -> int:
    """CRC-32 of a manifest entry as canonical JSON (sorted keys, no spaces), ``checksum.entry`` left
    out: it covers every field, the timestamps included."""
    checksum = {k: v for k, v in entry.get("checksum", {}).items() if k != "entry"}
    body = {**entry, "checksum": checksum}
    return zlib.crc32(json.dumps(body, sort_keys=True, separators=(",", ":")).encode())


@dataclass
class FeatureSetRecord:
    """What the manifest says about one feature set."""

    key: str
    file: str
    dtype: str
    shape: tuple[int, ...]
    has_labels: bool
    committed: list[tuple[int, int]]
    complete: bool
    block_rows: int
    block_crc32: list[int | None]
    labels_crc32: int | None
    header_crc32: int
    metadata: dict[str, Any] = field(default_factory=dict)
    created_at: float = 0.0
    finished_at: float | None = None
    #: the ``.pt`` export beside the file, as last written by featstore: its crc32 and size, or None
    export_crc32: int | None = None
    export_bytes: int | None = None
    #: ``checksum.entry`` as read (None: an entry of format version 1), and the crc32 of the entry as read
    entry_crc32: int | None = field(default=None, compare=False)
    entry_crc32_read: int | None = field(default=None, compare=False)
    #: how the set is quantised (field 'quant'; None: the features are stored as ``dtype`` values)
    quant: Quant | None = None

    @property
    def n_rows(self) -> int:
        return self.shape[0]

    @property
    def row_shape(self) -> tuple[int, ...]:
        return tuple(self.shape[1:])

    @property
    def rows_committed(self) -> int:
        return sum(b - a for a, b in self.committed)

    @property
    def layout(self) -> Layout:
        return Layout(
            self.n_rows, self.row_shape, self.dtype, self.has_labels, self.quant.scheme if self.quant else None
        )

    @property
    def entry_damaged(self) -> bool:
        """Whether the entry as read fails its own checksum (a version-1 entry has none)."""
        return self.entry_crc32 is not None and self.entry_crc32 != self.entry_crc32_read

    def to_json(self) -> dict[str, Any]:
        """The manifest entry, as written to ``featstore.json`` (with ``checksum.entry`` computed now)."""
        entry = self._fields()
        entry["checksum"]["entry"] = entry_crc32(entry)
        return entry

    def _fields(self) -> dict[str, Any]:
        export = None if self.export_crc32 is None else {"crc32": self.export_crc32, "bytes": self.export_bytes}
        quant = {} if self.quant is None else {"quant": self.quant.to_json()}  # absent for raw sets
        return {
            **quant,
            "file": self.file,
            "dtype": self.dtype,
            "shape": list(self.shape),
            "labels": self.has_labels,
            "rows_committed": self.rows_committed,
            "committed": [list(r) for r in self.committed],
            "complete": self.complete,
            "checksum": {
                "algorithm": CHECKSUM_ALGORITHM,
                "block_rows": self.block_rows,
                "blocks": self.block_crc32,
                "labels": self.labels_crc32,
                "header": self.header_crc32,
                "export": export,
            },
            "metadata": self.metadata,
            "created_at": self.created_at,
            "finished_at": self.finished_at,
        }

    @classmethod
    def from_json(cls, key: str, obj: Any, where: str) -> FeatureSetRecord:
        """Validate one manifest entry; ``where`` names the manifest in errors."""
        try:
            check_key(key)
        except ValueError as exc:
            raise FormatError(f"{where}: {exc}") from None
        entry = _Entry(obj, f"{where}: feature set {key!r}")
        file = entry.get("file", str, "a relative path")
        check_member_path(file, f"{entry.at}: field 'file'")
        dtype = entry.get("dtype", str, "a dtype name")
        if dtype not in DTYPES:
            raise FormatError(f"{entry.at}: field 'dtype' is {dtype!r}, not one of {', '.join(DTYPES)}")
        shape = entry.get("shape", list, "a list of non-negative integers")
        if not shape or not all(is_nonneg_int(d) for d in shape):
            raise FormatError(
                f"{entry.at}: field 'shape' must be a non-empty list of non-negative integers, got {short_repr(shape)}"
            )
        shape_nbytes(shape, itemsize(dtype), entry.at)
        n_rows = shape[0]
        has_labels = entry.get("labels", bool, "true or false")
        complete = entry.get("complete", bool, "true or false")
        committed = _parse_committed(entry, n_rows)
        block_rows, blocks, labels_crc, header_crc = _parse_checksum(entry, n_rows, has_labels)
        metadata = obj.get("metadata", {})
        if not isinstance(metadata, dict):
            raise FormatError(f"{entry.at}: field 'metadata' must be an object")
        rows_committed = sum(b - a for a, b in committed)
        if obj.get("rows_committed", rows_committed) != rows_committed:
            raise FormatError(
                f"{entry.at}: field 'rows_committed' is {obj.get('rows_committed')!r} but 'committed' "
                f"holds {rows_committed} rows"
            )
        if complete and rows_committed != n_rows:
            raise FormatError(f"{entry.at}: marked complete but only some of its {n_rows} rows are committed")
        created_at, finished_at = (_parse_time(entry, name) for name in ("created_at", "finished_at"))
        export_crc, export_bytes = _parse_export(entry)
        quant = _parse_quant(entry, dtype, shape)
        stored_entry_crc = obj["checksum"].get("entry")
        if stored_entry_crc is not None and not is_nonneg_int(stored_entry_crc):
            raise FormatError(f"{entry.at}: field 'checksum.entry' must be the crc32 of the entry, or absent")
        return cls(
            key=key,
            file=file,
            dtype=dtype,
            shape=tuple(shape),
            has_labels=has_labels,
            committed=committed,
            complete=complete,
            block_rows=block_rows,
            block_crc32=blocks,
            labels_crc32=labels_crc,
            header_crc32=header_crc,
            metadata=metadata,
            created_at=float(created_at or 0.0),
            finished_at=finished_at,
            export_crc32=export_crc,
            export_bytes=export_bytes,
            entry_crc32=stored_entry_crc,
            entry_crc32_read=entry_crc32(obj) if stored_entry_crc is not None else None,
            quant=quant,
        )


class _Entry:
    """A manifest entry being validated: typed field access whose errors name the entry (``at``)."""

    def __init__(self, obj: Any, at: str):
        self.at = at
        if not isinstance(obj, dict):
            raise FormatError(f"{at} is not a JSON object")
        checksum = obj.get("checksum")
        unknown = sorted(set(obj) - ENTRY_FIELDS) + sorted(
            f"checksum.{k}" for k in (checksum if isinstance(checksum, dict) else {}) if k not in CHECKSUM_FIELDS
        )
        if unknown:
            raise FormatError(f"{at}: unknown field(s) {unknown}; the manifest is damaged or from another program")
        self.obj = obj

    def get(self, name: str, kind: type, desc: str) -> Any:
        value = self.obj.get(name)
        if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
            raise FormatError(f"{self.at}: field {name!r} must be {desc}, got {value!r}")
        return value


def _parse_committed(entry: _Entry, n_rows: int) -> list[tuple[int, int]]:
    """Field 'committed': sorted, disjoint, non-adjacent [start, end) ranges within the set's rows."""
    committed: list[tuple[int, int]] = []
    last_end = -1
    for r in entry.get("committed", list, "a list of [start, end) row ranges"):
        if (
            not isinstance(r, list)
            or len(r) != 2
            or not all(is_nonneg_int(x) for x in r)
            or not (r[0] < r[1] <= n_rows)
            or r[0] <= last_end
        ):
            raise FormatError(
                f"{entry.at}: field 'committed' has a bad row range {r!r} (must be sorted, disjoint, "
                f"within {n_rows} rows)"
            )
        committed.append((r[0], r[1]))
        last_end = r[1]
    return committed


def _parse_checksum(entry: _Entry, n_rows: int, has_labels: bool) -> tuple[int, list[int | None], int | None, int]:
    """Field 'checksum': rows per block, one crc32 (or null) per block, the labels' and the header's crc32."""
    checksum = entry.get("checksum", dict, "an object")
    at = entry.at
    block_rows = checksum.get("block_rows")
    blocks = checksum.get("blocks")
    if not is_nonneg_int(block_rows) or block_rows == 0:
        raise FormatError(f"{at}: field 'checksum.block_rows' must be a positive integer, got {block_rows!r}")
    n_blocks = -(-n_rows // block_rows)
    if (
        not isinstance(blocks, list)
        or len(blocks) != n_blocks
        or not all(b is None or is_nonneg_int(b) for b in blocks)
    ):
        raise FormatError(f"{at}: field 'checksum.blocks' must list {n_blocks} crc32 values or nulls")
    if checksum.get("algorithm") != CHECKSUM_ALGORITHM:
        raise FormatError(
            f"{at}: field 'checksum.algorithm' is {checksum.get('algorithm')!r}; featstore writes "
            f"{CHECKSUM_ALGORITHM!r}"
        )
    labels_crc = checksum.get("labels")
    header_crc = checksum.get("header")
    if has_labels and not is_nonneg_int(labels_crc):
        raise FormatError(f"{at}: field 'checksum.labels' must be the crc32 of its labels, got {labels_crc!r}")
    if not has_labels and labels_crc is not None:
        raise FormatError(f"{at}: field 'checksum.labels' must be null for a set without labels")
    if not is_nonneg_int(header_crc):
        raise FormatError(f"{at}: field 'checksum.header' must be an integer")
    return block_rows, list(blocks), labels_crc, header_crc


def _parse_export(entry: _Entry) -> tuple[int | None, int | None]:
    """Field 'checksum.export': the crc32 and size of the ``.pt`` export beside the file, or null."""
    export = entry.obj["checksum"].get("export")
    if export is None:
        return None, None
    if (
        not isinstance(export, dict)
        or set(export) != EXPORT_FIELDS
        or not all(is_nonneg_int(export[k]) for k in EXPORT_FIELDS)
    ):
        raise FormatError(f"{entry.at}: field 'checksum.export' must be null or {{'crc32': int, 'bytes': int}}")
    return export["crc32"], export["bytes"]


def _parse_time(entry: _Entry, name: str) -> float | None:
    """Fields 'created_at' / 'finished_at': seconds since the epoch, or null."""
    stamp = entry.obj.get(name)
    # abs(x) < 1e12 also rejects NaN and inf, and compares huge ints without converting them
    if stamp is not None and not (
        isinstance(stamp, (int, float)) and not isinstance(stamp, bool) and abs(stamp) < 1e12
    ):
        raise FormatError(f"{entry.at}: field {name!r} must be a time in seconds or null, got {short_repr(stamp)}")
    return stamp


def _parse_quant(entry: _Entry, dtype: str, shape: list[int]) -> Quant | None:
    """Field 'quant': absent for raw sets, else the scheme (matching 'dtype') and the logical dtype."""
    quant = entry.obj.get("quant")
    if quant is None and "quant" not in entry.obj:
        return None
    if (
        not isinstance(quant, dict)
        or set(quant) != QUANT_FIELDS
        or quant["scheme"] not in SCHEMES
        or quant["dtype"] not in LOGICAL_DTYPES
        or quant["scales"] != "vector"
    ):
        raise FormatError(
            f"{entry.at}: field 'quant' must be {{'scheme': {' or '.join(map(repr, SCHEMES))}, "
            f"'dtype': {' or '.join(map(repr, LOGICAL_DTYPES))}, 'scales': 'vector'}}, got {short_repr(quant)}"
        )
    if SCHEMES[quant["scheme"]][0] != dtype or len(shape) < 2:
        raise FormatError(
            f"{entry.at}: field 'quant' says scheme {quant['scheme']!r} but the set stores {dtype} rows of shape "
            f"{shape[1:]}; the manifest is damaged"
        )
    return Quant(quant["scheme"], quant["dtype"])
