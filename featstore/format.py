"""The on-disk contract: safetensors headers featstore writes and accepts, and the versioned manifest.

Everything read from disk is untrusted here: sizes are checked against the file before anything is
allocated or mapped, and every error names the file and the field.
"""

from __future__ import annotations

import json
import math
import os
import re
import stat
import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

from .errors import CorruptFileError, FormatError, FormatVersionError

FORMAT_NAME = "featstore"
FORMAT_VERSION = 1
MANIFEST_NAME = "featstore.json"
LOCK_NAME = ".featstore.lock"
ALIGNMENT = 4096  # the data section (and so row 0 of "features") starts on this boundary
MAX_HEADER_BYTES = 100_000_000  # the same cap safetensors itself applies
MAX_TENSOR_BYTES = 1 << 62  # a shape needing more bytes than this (or any file could hold) is corrupt
FEATURES = "features"
LABELS = "labels"
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
    "bool": ("BOOL", 1),
}
SAFETENSORS_CODES = {code: name for name, (code, _) in DTYPES.items()}
_KEY_SEGMENT = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.+=-]*$")


def itemsize(dtype: str) -> int:
    """Bytes per element of a featstore dtype name."""
    return DTYPES[dtype][1]


def check_dtype(dtype: str) -> str:
    """Return dtype if featstore can store it, else raise naming the supported ones."""
    if dtype not in DTYPES:
        raise ValueError(f"unsupported dtype {dtype!r}; use one of {', '.join(DTYPES)}")
    return dtype


def check_key(key: str) -> str:
    """A feature-set key is a relative path of safe segments such as 'dinov2/layer_10' or 'clip/last_layer/cls'."""
    if not isinstance(key, str) or not key:
        raise ValueError(f"a feature-set key must be a non-empty string, got {key!r}")
    segments = key.split("/")
    for segment in segments:
        if segment in ("", ".", "..") or not _KEY_SEGMENT.match(segment):
            raise ValueError(
                f"invalid feature-set key {key!r}: use '/'-separated segments of letters, digits, '_', '-', '.', "
                "e.g. 'dinov2/layer_10'"
            )
    return key


def file_for_key(key: str) -> str:
    """The file a feature set is stored in, relative to the store root."""
    return check_key(key) + ".safetensors"


# --------------------------------------------------------------------------------------------
# safetensors headers
# --------------------------------------------------------------------------------------------


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


def _no_duplicate_keys(path: str):
    def hook(pairs):
        obj = {}
        for k, v in pairs:
            if k in obj:
                raise CorruptFileError(f"{path}: header has the key {k!r} twice; the file is corrupt, re-create it")
            obj[k] = v
        return obj

    return hook


def _is_nonneg_int(x: Any) -> bool:
    return isinstance(x, int) and not isinstance(x, bool) and x >= 0


def _load_json(text: str, path: str, what: str) -> Any:
    """json.loads for untrusted text: every way it can fail (bad syntax, nesting too deep for the
    parser's recursion, integers too long to convert, duplicate keys) is a CorruptFileError naming ``what``."""
    try:
        return json.loads(text, object_pairs_hook=_no_duplicate_keys(path))
    except json.JSONDecodeError as exc:
        raise CorruptFileError(f"{path}: {what} is not valid JSON ({exc.msg} at char {exc.pos}); the file is corrupt") from None
    except RecursionError:
        raise CorruptFileError(f"{path}: {what} nests JSON arrays/objects too deeply; the file is corrupt") from None
    except ValueError as exc:  # e.g. an integer with more digits than int() converts
        raise CorruptFileError(f"{path}: {what} is not valid JSON ({str(exc)[:120]}); the file is corrupt") from None


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
            raise error(f"{where}: field 'shape' {_short(shape)} needs more than {MAX_TENSOR_BYTES} bytes; the file is corrupt")
    return total


def _short(value: Any, limit: int = 120) -> str:
    """repr() of an untrusted value, cut to ``limit`` characters for an error message."""
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def open_regular_file(path: str | os.PathLike, what: str):
    """Open ``path`` for binary reading only if it is a regular file (not a FIFO, device or folder,
    which could block or never end); raises FormatError naming ``what`` otherwise."""
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    try:
        mode = os.fstat(fd).st_mode
        if not stat.S_ISREG(mode):
            kind = "a folder" if stat.S_ISDIR(mode) else "not a regular file"
            raise FormatError(f"{os.fspath(path)}: {what} is {kind}")
        os.set_blocking(fd, True)
        return os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise


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
    obj = _load_json(text, path, "header")
    if not isinstance(obj, dict):
        raise CorruptFileError(f"{path}: header is not a JSON object")

    metadata = obj.pop("__metadata__", {})
    if not isinstance(metadata, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in metadata.items()):
        raise CorruptFileError(f"{path}: header field '__metadata__' must map strings to strings")

    tensors: dict[str, TensorEntry] = {}
    for name, entry in obj.items():
        where = f"{path}: tensor {name!r}"
        if not isinstance(entry, dict):
            raise CorruptFileError(f"{where} is not a JSON object")
        code = entry.get("dtype")
        if not isinstance(code, str) or code not in SAFETENSORS_CODES:
            raise CorruptFileError(f"{where}: unknown dtype {_short(code)}; featstore reads {', '.join(SAFETENSORS_CODES)}")
        dtype = SAFETENSORS_CODES[code]
        shape = entry.get("shape")
        if not isinstance(shape, list) or not all(_is_nonneg_int(d) for d in shape):
            raise CorruptFileError(f"{where}: 'shape' must be a list of non-negative integers, got {_short(shape)}")
        offsets = entry.get("data_offsets")
        if not isinstance(offsets, list) or len(offsets) != 2 or not all(_is_nonneg_int(o) for o in offsets):
            raise CorruptFileError(f"{where}: 'data_offsets' must be [begin, end] integers, got {_short(offsets)}")
        begin, end = offsets
        if begin > end:
            raise CorruptFileError(f"{where}: 'data_offsets' begin {begin} is after end {end}")
        nbytes = shape_nbytes(shape, itemsize(dtype), where, CorruptFileError)
        if end - begin != nbytes:
            raise CorruptFileError(
                f"{where}: 'data_offsets' span {end - begin} bytes but shape {_short(shape)} of {dtype} needs {nbytes}"
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


# --------------------------------------------------------------------------------------------
# the manifest
# --------------------------------------------------------------------------------------------


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
        return Layout(self.n_rows, self.row_shape, self.dtype, self.has_labels)

    def to_json(self) -> dict[str, Any]:
        return {
            "file": self.file,
            "dtype": self.dtype,
            "shape": list(self.shape),
            "labels": self.has_labels,
            "rows_committed": self.rows_committed,
            "committed": [list(r) for r in self.committed],
            "complete": self.complete,
            "checksum": {
                "algorithm": "crc32",
                "block_rows": self.block_rows,
                "blocks": self.block_crc32,
                "labels": self.labels_crc32,
                "header": self.header_crc32,
            },
            "metadata": self.metadata,
            "created_at": self.created_at,
            "finished_at": self.finished_at,
        }

    @classmethod
    def from_json(cls, key: str, obj: Any, where: str) -> "FeatureSetRecord":
        """Validate one manifest entry; ``where`` names the manifest in errors."""
        at = f"{where}: feature set {key!r}"
        try:
            check_key(key)
        except ValueError as exc:
            raise FormatError(f"{where}: {exc}") from None
        if not isinstance(obj, dict):
            raise FormatError(f"{at} is not a JSON object")
        unknown = sorted(set(obj) - _ENTRY_FIELDS) + sorted(
            f"checksum.{k}" for k in (obj.get("checksum") if isinstance(obj.get("checksum"), dict) else {})
            if k not in _CHECKSUM_FIELDS)
        if unknown:
            raise FormatError(f"{at}: unknown field(s) {unknown}; the manifest is damaged or from another program")

        def get(name: str, kind, desc: str):
            value = obj.get(name)
            if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
                raise FormatError(f"{at}: field {name!r} must be {desc}, got {value!r}")
            return value

        file = get("file", str, "a relative path")
        check_member_path(file, f"{at}: field 'file'")
        dtype = get("dtype", str, "a dtype name")
        if dtype not in DTYPES:
            raise FormatError(f"{at}: field 'dtype' is {dtype!r}, not one of {', '.join(DTYPES)}")
        shape = get("shape", list, "a list of non-negative integers")
        if not shape or not all(_is_nonneg_int(d) for d in shape):
            raise FormatError(f"{at}: field 'shape' must be a non-empty list of non-negative integers, got {_short(shape)}")
        shape_nbytes(shape, itemsize(dtype), at)
        n_rows = shape[0]
        has_labels = get("labels", bool, "true or false")
        complete = get("complete", bool, "true or false")
        committed_raw = get("committed", list, "a list of [start, end) row ranges")
        committed: list[tuple[int, int]] = []
        last_end = -1
        for r in committed_raw:
            if (
                not isinstance(r, list)
                or len(r) != 2
                or not all(_is_nonneg_int(x) for x in r)
                or not (r[0] < r[1] <= n_rows)
                or r[0] <= last_end
            ):
                raise FormatError(f"{at}: field 'committed' has a bad row range {r!r} (must be sorted, disjoint, within {n_rows} rows)")
            committed.append((r[0], r[1]))
            last_end = r[1]
        checksum = get("checksum", dict, "an object")
        block_rows = checksum.get("block_rows")
        blocks = checksum.get("blocks")
        if not _is_nonneg_int(block_rows) or block_rows == 0:
            raise FormatError(f"{at}: field 'checksum.block_rows' must be a positive integer, got {block_rows!r}")
        n_blocks = -(-n_rows // block_rows)
        if not isinstance(blocks, list) or len(blocks) != n_blocks or not all(
            b is None or _is_nonneg_int(b) for b in blocks
        ):
            raise FormatError(f"{at}: field 'checksum.blocks' must list {n_blocks} crc32 values or nulls")
        if checksum.get("algorithm") != "crc32":
            raise FormatError(f"{at}: field 'checksum.algorithm' is {checksum.get('algorithm')!r}; featstore writes 'crc32'")
        labels_crc = checksum.get("labels")
        header_crc = checksum.get("header")
        if has_labels and not _is_nonneg_int(labels_crc):
            raise FormatError(f"{at}: field 'checksum.labels' must be the crc32 of its labels, got {labels_crc!r}")
        if not has_labels and labels_crc is not None:
            raise FormatError(f"{at}: field 'checksum.labels' must be null for a set without labels")
        if not _is_nonneg_int(header_crc):
            raise FormatError(f"{at}: field 'checksum.header' must be an integer")
        metadata = obj.get("metadata", {})
        if not isinstance(metadata, dict):
            raise FormatError(f"{at}: field 'metadata' must be an object")
        rows_committed = sum(b - a for a, b in committed)
        if obj.get("rows_committed", rows_committed) != rows_committed:
            raise FormatError(f"{at}: field 'rows_committed' is {obj.get('rows_committed')!r} but 'committed' holds "
                              f"{rows_committed} rows")
        if complete and rows_committed != n_rows:
            raise FormatError(f"{at}: marked complete but only some of its {n_rows} rows are committed")
        created_at, finished_at = obj.get("created_at"), obj.get("finished_at")
        for name, stamp in (("created_at", created_at), ("finished_at", finished_at)):
            # abs(x) < 1e12 also rejects NaN and inf, and compares huge ints without converting them
            if stamp is not None and not (isinstance(stamp, (int, float)) and not isinstance(stamp, bool)
                                          and abs(stamp) < 1e12):
                raise FormatError(f"{at}: field {name!r} must be a time in seconds or null, got {_short(stamp)}")
        return cls(
            key=key,
            file=file,
            dtype=dtype,
            shape=tuple(shape),
            has_labels=has_labels,
            committed=committed,
            complete=complete,
            block_rows=block_rows,
            block_crc32=list(blocks),
            labels_crc32=labels_crc,
            header_crc32=header_crc,
            metadata=metadata,
            created_at=float(created_at or 0.0),
            finished_at=finished_at,
        )


_ENTRY_FIELDS = {"file", "dtype", "shape", "labels", "rows_committed", "committed", "complete", "checksum", "metadata",
                 "created_at", "finished_at"}
_CHECKSUM_FIELDS = {"algorithm", "block_rows", "blocks", "labels", "header"}


def check_member_path(rel: str, where: str) -> str:
    """A manifest path must stay inside the store root: relative, no '..', no absolute path."""
    p = Path(rel)
    if not rel or p.is_absolute() or rel.startswith(("/", "\\")) or ".." in p.parts or "\\" in rel:
        raise FormatError(f"{where}: path {rel!r} leaves the store root; manifest paths must be relative and inside it")
    return rel


def resolve_member(root: Path, rel: str, where: str) -> Path:
    """The absolute path of a store member, refusing symlinks that lead out of the root."""
    check_member_path(rel, where)
    try:
        real_root = root.resolve()
        target = (root / rel).resolve()
    except (RuntimeError, OSError) as exc:  # a symlink loop, or a path too long to resolve
        raise FormatError(f"{where}: path {rel!r} cannot be resolved inside the store root ({exc})") from None
    if real_root != target and real_root not in target.parents:
        raise FormatError(f"{where}: {rel!r} resolves to {target}, outside the store root {real_root} (a symlink?)")
    return target


def empty_manifest() -> dict[str, Any]:
    return {"format": FORMAT_NAME, "format_version": FORMAT_VERSION, "feature_sets": {}}


def read_manifest(root: Path) -> tuple[dict[str, Any], dict[str, FeatureSetRecord]]:
    """Read and validate ``root/featstore.json``; returns the raw object and one record per key."""
    path = root / MANIFEST_NAME
    where = str(path)
    try:
        with open_regular_file(path, "the manifest") as f:
            size = os.fstat(f.fileno()).st_size
            if size > MAX_HEADER_BYTES:
                raise CorruptFileError(f"{where} is {size} bytes, larger than any manifest featstore writes")
            raw = f.read()
    except FileNotFoundError:
        raise FormatError(f"{where} does not exist: {root} is not a featstore root (create one with FeatureStore.create)") from None
    return parse_manifest(raw, where)


def parse_manifest(raw: bytes, where: str) -> tuple[dict[str, Any], dict[str, FeatureSetRecord]]:
    """Validate the bytes of a manifest (``where`` names it in errors); see :func:`read_manifest`."""
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise CorruptFileError(f"{where}: the manifest is not valid UTF-8 (byte {exc.start}); restore it from a backup") from None
    obj = _load_json(text, where, "the manifest")
    if not isinstance(obj, dict) or obj.get("format") != FORMAT_NAME:
        raise FormatError(f"{where}: not a featstore manifest (field 'format' must be {FORMAT_NAME!r})")
    version = obj.get("format_version")
    if not _is_nonneg_int(version):
        raise FormatError(f"{where}: field 'format_version' must be an integer, got {version!r}")
    if version > FORMAT_VERSION:
        raise FormatVersionError(
            f"{where}: format version {version} is newer than this featstore reads ({FORMAT_VERSION}); upgrade featstore"
        )
    sets = obj.get("feature_sets")
    if not isinstance(sets, dict):
        raise FormatError(f"{where}: field 'feature_sets' must be an object")
    records = {key: FeatureSetRecord.from_json(key, entry, where) for key, entry in sets.items()}
    files = [r.file for r in records.values()]
    if len(set(files)) != len(files):
        raise FormatError(f"{where}: two feature sets name the same file")
    return obj, records


def fsync_dir(path: Path) -> None:
    """Make a rename or file creation in ``path`` durable."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_json_atomic(path: Path, obj: Any, crash_hook=None) -> None:
    """Replace ``path`` atomically and durably: temp file, fsync, rename, fsync of the folder.

    ``crash_hook(step)`` is called between the steps (tests use it to kill the process there).
    """
    hook = crash_hook or (lambda step: None)
    data = json.dumps(obj, indent=1, sort_keys=True).encode("utf-8") + b"\n"
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o644)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]
        hook("manifest-temp-written")
        os.fsync(fd)
    finally:
        os.close(fd)
    hook("manifest-temp-synced")
    os.replace(tmp, path)
    hook("manifest-renamed")
    fsync_dir(path.parent)
    hook("manifest-dir-synced")


# --------------------------------------------------------------------------------------------
# row ranges
# --------------------------------------------------------------------------------------------


def merge_ranges(ranges: Iterable[tuple[int, int]]) -> list[tuple[int, int]]:
    """Sort and merge half-open row ranges (adjacent ones join)."""
    out: list[tuple[int, int]] = []
    for a, b in sorted(r for r in ranges if r[0] < r[1]):
        if out and a <= out[-1][1]:
            out[-1] = (out[-1][0], max(out[-1][1], b))
        else:
            out.append((a, b))
    return out


def overlaps(ranges: list[tuple[int, int]], a: int, b: int) -> tuple[int, int] | None:
    """The first range in sorted, disjoint ``ranges`` that intersects [a, b), or None."""
    for r in ranges:
        if r[0] < b and a < r[1]:
            return r
        if r[0] >= b:
            break
    return None


def gaps(ranges: list[tuple[int, int]], n_rows: int) -> list[tuple[int, int]]:
    """The parts of [0, n_rows) that the sorted, merged ``ranges`` leave out."""
    out, position = [], 0
    for a, b in ranges:
        if a > position:
            out.append((position, a))
        position = max(position, b)
    if position < n_rows:
        out.append((position, n_rows))
    return out


def covers(ranges: list[tuple[int, int]], a: int, b: int) -> bool:
    """Whether the sorted, merged ``ranges`` contain all of [a, b)."""
    return any(r[0] <= a and b <= r[1] for r in ranges)


def subtract_ranges(ranges: Iterable[tuple[int, int]], taken: list[tuple[int, int]]) -> list[tuple[int, int]]:
    """The parts of ``ranges`` outside the sorted, merged ``taken`` ranges, merged."""
    out = []
    for a, b in merge_ranges(ranges):
        out += [(max(a, g0), min(b, g1)) for g0, g1 in gaps(taken, b) if max(a, g0) < min(b, g1)]
    return merge_ranges(out)
