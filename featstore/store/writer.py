"""FeatureWriter: fills a preallocated safetensors file row range by row range, commits durably, resumes.

The protocol that makes a SIGKILL at any moment safe:
1. create: header + labels written, file sized to its final length, fsynced, folder fsynced; only then
   does the manifest name the file (so a manifest never points at a half-made file);
2. write: rows go straight to their final place with pwrite (never into committed rows);
3. commit: fdatasync the file, checksum the blocks that became complete, then replace the manifest
   atomically. Rows count as committed only once the manifest says so; uncommitted rows are
   simply written again on resume, with the same bytes.
"""

from __future__ import annotations

import fcntl
import json
import os
import struct
import time
import zlib
from pathlib import Path

import numpy as np

from .._dtypes import as_tensor, byte_view, dtype_name
from ..errors import FeatureStoreError, IncompleteFeatureSetError, WriterBusyError, WriterConflictError
from .checksums import block_crc32, block_rows_for
from .crashpoints import crashpoint
from .files import fsync_dir
from .header import FILE_FORMAT_VERSION, MAX_HEADER_BYTES, Layout, encode_header, read_header
from .manifest import Manifest
from .paths import file_for_key, resolve_member
from .quant import Quant, quantise
from .ranges import covers, gaps, merge_ranges, overlaps, subtract_ranges
from .record import FeatureSetRecord


def _pwrite_all(fd: int, data: memoryview, offset: int) -> None:
    while data:
        n = os.pwrite(fd, data, offset)
        data = data[n:]
        offset += n


def header_metadata(key: str, metadata: dict, quant: Quant | None = None) -> dict[str, str]:
    """The safetensors ``__metadata__`` of a feature set: provenance repeated for readers without featstore
    (and, for a quantised set, ``featstore.quant``: the scheme and the logical dtype)."""
    out = {
        "format": "pt",
        "featstore.format_version": str(FILE_FORMAT_VERSION),
        "featstore.key": key,
        "featstore.metadata": json.dumps(metadata, sort_keys=True, separators=(",", ":")),
    }
    if quant is not None:
        out["featstore.quant"] = json.dumps(quant.to_json(), sort_keys=True, separators=(",", ":"))
    return out


def expected_header(key: str, layout: Layout, metadata: dict, quant: Quant | None = None) -> bytes:
    """The safetensors header featstore writes for feature set ``key`` of ``layout`` and ``metadata``."""
    return encode_header(layout.tensors(), header_metadata(key, metadata, quant))


class FeatureWriter:
    """Writes one feature set. Get one from :meth:`FeatureStore.create_feature_set`.

    ``write(start_row, rows)`` accepts row ranges in any order; ``commit()`` makes them durable;
    ``finish()`` marks the set complete and read-only. As a context manager it commits on a clean
    exit (and finishes once every row is written) and leaves uncommitted rows out on an exception.
    """

    def __init__(self, manifest: Manifest, record: FeatureSetRecord, fd: int, path: Path, data_start: int):
        self.manifest = manifest
        self._record = record
        self._fd = fd
        self.path = path
        self._data_start = data_start
        self._layout = record.layout
        self._pending: list[tuple[int, int]] = []
        self._closed = False

    # ---- what it is -------------------------------------------------------------------------
    @property
    def record(self) -> FeatureSetRecord:
        """The set's manifest record, kept up to date by this writer (do not change it)."""
        return self._record

    @property
    def key(self) -> str:
        return self._record.key

    @property
    def n_rows(self) -> int:
        return self._record.n_rows

    @property
    def row_shape(self) -> tuple[int, ...]:
        return self._record.row_shape

    @property
    def dtype(self) -> str:
        """The dtype ``write`` takes: the stored one, or for a quantised set its logical dtype."""
        quant = self._record.quant
        return quant.dtype if quant is not None else self._record.dtype

    @property
    def committed_ranges(self) -> list[tuple[int, int]]:
        """Row ranges [start, end) that are durable."""
        return list(self._record.committed)

    @property
    def rows_committed(self) -> int:
        return self._record.rows_committed

    @property
    def complete(self) -> bool:
        return self._record.complete

    def missing_ranges(self) -> list[tuple[int, int]]:
        """Row ranges not committed yet: what a resumed job still has to write."""
        return gaps(self._record.committed, self.n_rows)

    # ---- writing ----------------------------------------------------------------------------
    def write(self, start_row: int, rows) -> None:
        """Write ``rows`` (shape ``(k, *row_shape)``, this set's dtype) at rows ``start_row .. start_row+k``."""
        self._check_open()
        t = as_tensor(rows)
        expected = (t.shape[0] if t.dim() else 0, *self.row_shape)
        if t.dim() != len(self.row_shape) + 1 or tuple(t.shape) != expected:
            raise ValueError(
                f"feature set {self.key!r}: rows must have shape (k, {', '.join(map(str, self.row_shape))}), "
                f"got {tuple(t.shape)}"
            )
        if dtype_name(t.dtype) != self.dtype:
            raise TypeError(
                f"feature set {self.key!r} stores {self.dtype}, got {dtype_name(t.dtype)} rows; convert them first "
                f"(e.g. rows.to(torch.{self.dtype}))"
            )
        start = int(start_row)
        end = start + t.shape[0]
        if start < 0 or end > self.n_rows:
            raise IndexError(f"feature set {self.key!r}: rows {start}..{end} fall outside its {self.n_rows} rows")
        if start == end:
            return
        clash = overlaps(self._record.committed, start, end)
        if clash is not None:
            raise WriterConflictError(
                f"feature set {self.key!r}: rows {start}..{end} overlap committed rows {clash[0]}..{clash[1]}; "
                "committed rows are never written again (see missing_ranges())"
            )
        t = t.cpu().contiguous()
        if self._record.quant is not None:
            t, scales = quantise(t, self._record.quant.scheme)
            sb = self._layout.scale_count * 4
            at = self._data_start + self._layout.scales_begin + start * sb
            _pwrite_all(self._fd, byte_view(scales), at)
        _pwrite_all(self._fd, byte_view(t), self._data_start + start * self._layout.row_bytes)
        self._pending = merge_ranges([*self._pending, (start, end)])
        crashpoint("data-written")

    def commit(self) -> None:
        """Make every row written so far durable; when this returns, a crash cannot lose them."""
        self._check_open()
        if not self._pending:
            return
        os.fdatasync(self._fd)
        crashpoint("data-synced")
        self._record_committed(self._pending, self._fd)
        self._pending = []

    def adopt(self, ranges) -> int:
        """Count rows that other processes wrote into this file and made durable (the ranks of a
        torch.distributed job, see featstore.store.shards) as committed: checksum the blocks they complete
        and update the manifest. Returns the number of rows newly committed.

        The checksums are read through a freshly opened descriptor, so on a network filesystem they see
        what other nodes wrote (close-to-open consistency)."""
        self._check_open()
        new = subtract_ranges(ranges, self._record.committed)
        if not new:
            return 0
        if new[-1][1] > self.n_rows:
            raise ValueError(f"feature set {self.key!r}: rows {new[-1]} fall outside its {self.n_rows} rows")
        fd = os.open(self.path, os.O_RDONLY | os.O_CLOEXEC)
        try:
            self._record_committed(new, fd)
        finally:
            os.close(fd)
        return sum(b - a for a, b in new)

    def _record_committed(self, ranges: list[tuple[int, int]], read_fd: int) -> None:
        """Add durable ``ranges`` to the committed rows: checksum blocks they complete, replace the manifest entry."""
        record = self._record
        committed = merge_ranges([*record.committed, *ranges])
        blocks = list(record.block_crc32)
        br = record.block_rows
        for a, b in ranges:
            for block in range(a // br, (b - 1) // br + 1):
                lo, hi = block * br, min(self.n_rows, (block + 1) * br)
                if blocks[block] is None and covers(committed, lo, hi):
                    blocks[block] = block_crc32(read_fd, self._data_start, self._layout, lo, hi)
        crashpoint("blocks-checksummed")
        record.committed = committed
        record.block_crc32 = blocks
        self.manifest.put(record)

    def finish(self) -> None:
        """Commit, check that every row is written, mark the set complete and make its file read-only."""
        self._check_open()
        missing = gaps(merge_ranges([*self._record.committed, *self._pending]), self.n_rows)
        if missing:
            raise IncompleteFeatureSetError(
                f"feature set {self.key!r}: cannot finish, rows {missing[:5]} were never written; write them first"
            )
        self.commit()
        os.fchmod(self._fd, 0o444)
        os.fsync(self._fd)
        crashpoint("file-read-only")
        self._record.complete = True
        self._record.finished_at = time.time()
        self.manifest.put(self._record)
        self.close()

    def close(self) -> None:
        """Release the file and its lock without committing; committed rows stay, the set stays resumable."""
        if not self._closed:
            self._closed = True
            os.close(self._fd)

    def _check_open(self) -> None:
        if self._closed:
            raise WriterConflictError(f"feature set {self.key!r}: this writer is closed or finished")

    def __enter__(self) -> FeatureWriter:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        try:
            if exc_type is None and not self._closed:
                self.commit()
                if not self.missing_ranges():
                    self.finish()
        finally:
            self.close()

    def __del__(self):
        if not getattr(self, "_closed", True):
            try:
                os.close(self._fd)
            except OSError:
                pass

    def __repr__(self) -> str:
        return (
            f"FeatureWriter({self.key!r}, rows_committed={self.rows_committed}/{self.n_rows}, "
            f"pending={sum(b - a for a, b in self._pending)})"
        )


def _open_for_writing(path: Path) -> tuple[int, bool]:
    """Open (creating) a feature set's file for writing; returns (fd, writable).

    finish() makes the file read-only just before the manifest marks the set complete. A crash in
    between leaves a read-only file whose rows are all committed; for a non-root user opening it for
    writing fails, so it is opened read-only: a resumed writer has nothing to write, only to finish.
    """
    try:
        return os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644), True
    except PermissionError as exc:
        if not path.exists():
            raise FeatureStoreError(
                f"{path}: cannot create it ({exc.strerror}); the store's folder "
                f"{path.parent} must be writable by this user"
            ) from None
        return os.open(path, os.O_RDONLY | os.O_CLOEXEC), False


def _lock_file(fd: int, key: str, path: Path) -> None:
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise WriterBusyError(
            f"feature set {key!r} ({path}) is being written by another process; wait for it or kill it, then resume"
        ) from None


def create_writer(
    manifest: Manifest,
    key: str,
    n_rows: int,
    row_shape: tuple[int, ...],
    dtype: str,
    metadata: dict,
    labels: np.ndarray | None,
    resume: bool,
    quant: Quant | None = None,
) -> FeatureWriter:
    """Start (or, with ``resume=True``, continue) a feature set; see FeatureStore.create_feature_set.
    With ``quant``, ``dtype`` is ignored: the file stores the scheme's codes and their scales."""
    rel = file_for_key(key)
    path = resolve_member(manifest.root, rel, f"feature set {key!r}")
    if quant is not None:
        dtype = quant.storage_dtype
    layout = Layout(n_rows, row_shape, dtype, labels is not None, quant.scheme if quant else None)
    header = expected_header(key, layout, metadata, quant)
    labels_bytes = byte_view(as_tensor(labels)) if labels is not None else memoryview(b"")
    labels_crc = zlib.crc32(labels_bytes) if labels is not None else None

    existing = manifest.get(key)
    if existing is not None and existing.complete:
        raise _already_complete(key)  # before opening: a finished file is never opened for writing
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, writable = _open_for_writing(path)
    _lock_file(fd, key, path)
    try:
        existing = manifest.get(key)
        if not writable and (existing is None or (not existing.complete and gaps(existing.committed, existing.n_rows))):
            raise _read_only_conflict(key, path, existing)
        if existing is not None:
            return _resume(manifest, existing, fd, path, layout, header, labels_crc, metadata, resume, quant)
        # A new set. A file here without a manifest entry is an orphan of a crash during creation: it
        # holds no committed rows, so it is rebuilt — but only if it is one of ours for this key.
        if os.fstat(fd).st_size:
            _check_orphan(path, key)
        os.ftruncate(fd, 0)
        _pwrite_all(fd, memoryview(header), 0)
        os.ftruncate(fd, len(header) + layout.data_bytes)
        if labels is not None:
            _pwrite_all(fd, labels_bytes, len(header) + layout.features_bytes)
        crashpoint("header-written")
        os.fsync(fd)
        fsync_dir(path.parent)
        crashpoint("file-created")
        br = block_rows_for(layout.row_bytes)
        record = FeatureSetRecord(
            key=key,
            file=rel,
            dtype=dtype,
            shape=(n_rows, *row_shape),
            has_labels=labels is not None,
            committed=[],
            complete=False,
            block_rows=br,
            block_crc32=[None] * (-(-n_rows // br)),
            labels_crc32=labels_crc,
            header_crc32=zlib.crc32(header),
            metadata=metadata,
            created_at=time.time(),
            quant=quant,
        )
        manifest.put(record, must_be_new=True)
        return FeatureWriter(manifest, record, fd, path, len(header))
    except BaseException:
        try:
            os.close(fd)
        except OSError:
            pass
        raise


def _resume(
    manifest: Manifest, existing: FeatureSetRecord, fd, path, layout, header, labels_crc, metadata, resume, quant
) -> FeatureWriter:
    key = existing.key
    if existing.complete:
        raise _already_complete(key)
    if not resume:
        raise WriterConflictError(
            f"feature set {key!r} already exists with {existing.rows_committed} of {existing.n_rows} rows committed; "
            "pass resume=True to continue it"
        )
    wanted = {
        "shape": (layout.n_rows, *layout.row_shape),
        "dtype": layout.dtype,
        "labels": labels_crc is not None,
        "labels checksum": labels_crc,
        "metadata": metadata,
        "quantisation": quant,
    }
    stored = {
        "shape": existing.shape,
        "dtype": existing.dtype,
        "labels": existing.has_labels,
        "labels checksum": existing.labels_crc32,
        "metadata": existing.metadata,
        "quantisation": existing.quant,
    }
    for name, value in wanted.items():
        if stored[name] != value:
            raise WriterConflictError(
                f"feature set {key!r}: cannot resume, its {name} is {stored[name]!r} but this run asks for {value!r}; "
                "resume with the same arguments or write to another key"
            )
    on_disk, raw = read_header(path)
    if raw != header or zlib.crc32(raw) != existing.header_crc32:
        raise WriterConflictError(f"{path}: header differs from what this run would write; the file was changed")
    return FeatureWriter(manifest, existing, fd, path, on_disk.data_start)


def _read_only_conflict(key: str, path: Path, existing) -> WriterConflictError:
    if existing is None:
        why = "the manifest does not list it (left by an interrupted delete, or not featstore's)"
    else:
        why = (
            f"the manifest says only {existing.rows_committed} of {existing.n_rows} rows are committed; featstore "
            "makes only finished files read-only, so it was changed outside featstore"
        )
    return WriterConflictError(
        f"feature set {key!r}: {path} is read-only and {why}: move it away or choose another key"
    )


def _already_complete(key: str) -> WriterConflictError:
    return WriterConflictError(f"feature set {key!r} is already complete; choose another key to write new features")


def _check_orphan(path: Path, key: str) -> None:
    """Refuse to rebuild a file unless its header (possibly of a half-made file) names this key."""
    with open(path, "rb") as f:
        size = os.fstat(f.fileno()).st_size
        first = f.read(8)
        header_len = struct.unpack("<Q", first)[0] if len(first) == 8 else -1
        body = f.read(header_len) if 0 < header_len <= min(MAX_HEADER_BYTES, size - 8) else b""
    try:
        found = json.loads(body.decode("utf-8"))["__metadata__"]["featstore.key"]
    except (ValueError, KeyError, TypeError):
        found = None
    if found != key:
        raise WriterConflictError(
            f"{path} exists but the manifest does not list it and it is not a featstore file for {key!r}; "
            "move it away or choose another key"
        )
