"""FeatureStore and FeatureSet: open a store root, validate it, and read feature sets zero-copy.

Opening reads only the manifest and each file's header; feature data is memory-mapped and read
on demand, so opening 10 GB of features costs a few pages of memory.
"""

from __future__ import annotations

import copy
import fcntl
import fnmatch
import json
import os
import zlib
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterable, Iterator

import numpy as np
import torch

from . import _backend
from . import format as fmt
from ._crashpoints import crashpoint
from ._dtypes import TORCH_DTYPES, byte_view, dtype_name
from .errors import (
    CorruptFileError,
    FeatureStoreError,
    FormatError,
    IncompleteFeatureSetError,
    MissingKeyError,
    WriterConflictError,
)
from .indexing import normalize_rows


class FeatureSet:
    """One stored feature matrix of shape ``(N, *row_shape)``, memory-mapped read-only.

    Indexing follows numpy along the first axis and returns torch tensors: ``fs[3]``, ``fs[-1]``,
    ``fs[10:20]`` (a zero-copy view), ``fs[[5, 1, 5]]``, ``fs[mask]``. ``fs.gather(idx, out=buf)``
    fills a preallocated tensor. Views are copy-on-write: writing to them never touches the file.
    """

    def __init__(self, root: Path, record: fmt.FeatureSetRecord, allow_incomplete: bool = False):
        self.root = root
        self.record = copy.deepcopy(record)  # a snapshot: a writer in this process may move on
        self.path, self.header, _ = checked_header(root, record)
        if not record.complete and not allow_incomplete:
            raise IncompleteFeatureSetError(
                f"feature set {record.key!r} ({self.path}) has {record.rows_committed} of {record.n_rows} rows committed; "
                "resume its writer, or open it with store.get(key, allow_incomplete=True)"
            )
        self._mapped = _backend.MappedFile(str(self.path))
        expected = self.header.data_start + record.layout.features_bytes + record.layout.labels_bytes
        if self._mapped.size != expected:
            raise CorruptFileError(f"{self.path}: file is {self._mapped.size} bytes, expected {expected}; it changed or was truncated")
        start = self.header.data_start
        self._features = memoryview(self._mapped)[start : start + record.layout.features_bytes]
        self._labels: torch.Tensor | None = None
        self._committed_starts = np.array([a for a, _ in record.committed], dtype=np.int64)
        self._committed_ends = np.array([b for _, b in record.committed], dtype=np.int64)

    # ---- what it is -------------------------------------------------------------------------
    @property
    def key(self) -> str:
        return self.record.key

    @property
    def shape(self) -> tuple[int, ...]:
        return self.record.shape

    @property
    def row_shape(self) -> tuple[int, ...]:
        return self.record.row_shape

    @property
    def dtype(self) -> torch.dtype:
        return TORCH_DTYPES[self.record.dtype]

    @property
    def row_bytes(self) -> int:
        return self.record.layout.row_bytes

    @property
    def nbytes(self) -> int:
        return self.record.layout.features_bytes

    @property
    def metadata(self) -> dict[str, Any]:
        return self.record.metadata

    @property
    def complete(self) -> bool:
        return self.record.complete

    @property
    def rows_committed(self) -> int:
        return self.record.rows_committed

    @property
    def committed_ranges(self) -> list[tuple[int, int]]:
        return list(self.record.committed)

    def __len__(self) -> int:
        return self.record.n_rows

    def __repr__(self) -> str:
        state = "complete" if self.complete else f"{self.rows_committed}/{len(self)} rows committed"
        return f"FeatureSet({self.key!r}, shape={self.shape}, dtype={self.record.dtype}, {state})"

    # ---- zero-copy views --------------------------------------------------------------------
    def to_torch(self) -> torch.Tensor:
        """The whole matrix as a tensor view of the mapped file (no copy; writes stay private)."""
        if self.nbytes == 0:
            return torch.empty(self.shape, dtype=self.dtype)
        flat = torch.frombuffer(self._features, dtype=torch.uint8)
        return flat.view(self.dtype).view(self.shape)

    def to_numpy(self) -> np.ndarray:
        """The whole matrix as a numpy view (no copy); bfloat16 has no numpy dtype, use to_torch()."""
        if self.record.dtype == "bfloat16":
            raise TypeError(f"feature set {self.key!r} is bfloat16, which numpy cannot represent; use to_torch()")
        return np.frombuffer(self._features, dtype=np.dtype(self.record.dtype)).reshape(self.shape)

    @property
    def labels(self) -> torch.Tensor | None:
        """Per-row int64 labels stored with the features, or None."""
        if not self.record.has_labels:
            return None
        if self._labels is None:
            start = self.header.data_start + self.record.layout.features_bytes
            raw = memoryview(self._mapped)[start : start + self.record.layout.labels_bytes]
            arr = np.frombuffer(raw, dtype=np.int64) if len(raw) else np.empty(0, np.int64)
            if arr.ctypes.data % 8:
                arr = arr.copy()  # unaligned (odd row sizes): a small private copy
            self._labels = torch.from_numpy(arr)
        return self._labels

    def advise(self, advice: str) -> None:
        """madvise the feature data: 'random', 'sequential', 'willneed' (prefetch into page cache), 'normal'."""
        if self.nbytes:
            self._mapped.advise(self.header.data_start, self.nbytes, advice)

    # ---- reading rows -----------------------------------------------------------------------
    def __getitem__(self, index) -> torch.Tensor:
        if isinstance(index, tuple):
            if not index or index[0] is Ellipsis or index[0] is None:
                self._check_all_committed()
                return self.to_torch()[index]
            first, rest = index[0], index[1:]
            head = self[first]
            lead = 0 if _is_scalar_index(first) else 1
            return head[(slice(None),) * lead + rest]
        if isinstance(index, slice):
            start, stop, step = index.indices(len(self))
            if step > 0:
                if not self.complete:
                    self._check_committed(np.arange(start, stop, step, dtype=np.int64))
                return self.to_torch()[start:stop:step]
            return self.gather(np.arange(start, stop, step, dtype=np.int64))
        rows, lead = normalize_rows(index, len(self))
        out = self._gather_checked(rows)
        return out.view(*lead, *self.row_shape)

    def gather(self, index, out: torch.Tensor | None = None) -> torch.Tensor:
        """Copy the rows ``index`` (numpy-style) into ``out`` (allocated when None) and return it.

        ``out`` must be a contiguous CPU tensor (pinned is fine) of this set's dtype with
        ``len(rows)`` rows; the copy runs in the compiled core with the GIL released.
        """
        rows, lead = normalize_rows(index, len(self))
        if lead == ():
            lead = (1,)
        result = self._gather_checked(rows, out)
        return result if out is not None else result.view(*lead, *self.row_shape)

    def _gather_checked(self, rows: np.ndarray, out: torch.Tensor | None = None) -> torch.Tensor:
        self._check_committed(rows)
        expected = (len(rows), *self.row_shape)
        if out is None:
            out = torch.empty(expected, dtype=self.dtype)
        else:
            _check_out(out, expected, self.dtype, self.key)
        self.gather_into(rows, out)
        return out

    def gather_into(self, rows: np.ndarray, out: torch.Tensor, threads: int = 0) -> None:
        """Hot path for loaders: ``rows`` is a valid int64 array, ``out`` a matching contiguous tensor.
        ``threads``: 0 uses the gather pool, 1 copies on the calling thread."""
        if self.row_bytes and len(rows):
            _backend.gather(self._features, self.row_bytes, rows, byte_view(out), threads)

    def _check_all_committed(self) -> None:
        if not self.complete and self.rows_committed != len(self):
            raise IncompleteFeatureSetError(
                f"feature set {self.key!r}: rows outside {self.committed_ranges[:5]} are not committed"
            )

    def _check_committed(self, rows: np.ndarray) -> None:
        if self.complete or not len(rows):
            return
        if not len(self._committed_starts):
            ok = np.zeros(len(rows), dtype=bool)
        else:
            slot = np.searchsorted(self._committed_starts, rows, side="right") - 1
            ok = (slot >= 0) & (rows < self._committed_ends[np.maximum(slot, 0)])
        if not ok.all():
            bad = int(rows[np.argmin(ok)])
            raise IncompleteFeatureSetError(
                f"feature set {self.key!r}: row {bad} is not committed yet (committed: {self.committed_ranges[:5]})"
            )

    # ---- conveniences built on the loader and exports --------------------------------------
    def batches(self, batch_size: int, **kwargs):
        """Batches of this set (and its labels); see :func:`featstore.loader.batches` for the options."""
        from .loader import BatchLoader

        return BatchLoader({self.key: self}, batch_size, **kwargs)

    def dataset(self, labels: bool = True):
        """A map-style torch Dataset over this set; see :class:`featstore.torch_data.FeatureDataset`."""
        from .torch_data import FeatureDataset

        return FeatureDataset([self], labels=labels)

    def export_pt(self, path: str | os.PathLike | None = None) -> Path:
        """Write the seed's ``.pt`` format beside the safetensors file (or to ``path``); see featstore.pt_io."""
        from .pt_io import export_pt

        return export_pt(self, path)

    def __reduce__(self):
        # Worker processes reopen the file from the same manifest snapshot; nothing mapped is pickled.
        return (_reopen_feature_set, (str(self.root), self.record.to_json(), self.key, not self.complete))


def _reopen_feature_set(root: str, record_json: dict, key: str, allow_incomplete: bool) -> FeatureSet:
    record = fmt.FeatureSetRecord.from_json(key, record_json, f"{root}/{fmt.MANIFEST_NAME}")
    return FeatureSet(Path(root), record, allow_incomplete=allow_incomplete)


def _is_scalar_index(index) -> bool:
    if isinstance(index, (torch.Tensor, np.ndarray)):
        return index.ndim == 0 and index.dtype not in (torch.bool, np.bool_)
    return isinstance(index, (int, np.integer)) and not isinstance(index, (bool, np.bool_))


def _check_out(out: torch.Tensor, expected: tuple[int, ...], dtype: torch.dtype, key: str) -> None:
    if not isinstance(out, torch.Tensor) or out.device.type != "cpu":
        raise ValueError(f"feature set {key!r}: out must be a CPU tensor (pinned is fine)")
    if out.dtype != dtype or tuple(out.shape) != expected or not out.is_contiguous():
        raise ValueError(
            f"feature set {key!r}: out must be a contiguous {dtype} tensor of shape {expected}, "
            f"got {out.dtype} {tuple(out.shape)}{'' if out.is_contiguous() else ' (not contiguous)'}"
        )


def checked_header(root: Path, record: fmt.FeatureSetRecord) -> tuple[Path, fmt.Header, bytes]:
    """Resolve a feature set's file inside ``root`` and check its header against the manifest record."""
    where = f"feature set {record.key!r}"
    path = fmt.resolve_member(root, record.file, where)
    header, raw = _read_header_for(path, where)
    _check_header(path, record, header, raw)
    return path, header, raw


def _read_header_for(path: Path, where: str) -> tuple[fmt.Header, bytes]:
    try:
        return fmt.read_header(path)
    except FileNotFoundError:
        raise FormatError(f"{where}: its file {path} is missing; restore it or remove the entry from the manifest") from None


def _check_header(path: Path, record: fmt.FeatureSetRecord, header: fmt.Header, raw: bytes) -> None:
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
        raise FormatError(f"{path}: holds feature set {key!r} but the manifest lists it as {record.key!r}; "
                          "the manifest is damaged: restore it from a backup")
    try:
        metadata = json.loads(header.metadata.get("featstore.metadata", "null"))
    except ValueError:
        metadata = None
    if metadata != record.metadata:
        raise FormatError(f"{path}: the provenance metadata in its header differs from the manifest's for feature set "
                          f"{record.key!r}; the manifest is damaged: restore it from a backup")


class FeatureStore:
    """A store root: ``featstore.json`` plus one safetensors file per feature set.

    ``FeatureStore.create(root)`` makes (or opens) a root for writing; ``FeatureStore.open(root)``
    opens an existing one and validates every file's header against the manifest.
    """

    def __init__(self, root: Path, records: dict[str, fmt.FeatureSetRecord], problems: dict[str, FeatureStoreError]):
        self.root = root
        self._records = records
        self.problems = problems
        self._open_sets: dict[tuple[str, bool], FeatureSet] = {}

    # ---- opening ----------------------------------------------------------------------------
    @classmethod
    def create(cls, root: str | os.PathLike) -> "FeatureStore":
        """Create a store at ``root`` (a new or empty folder), or open it if it is one already."""
        root = Path(root)
        root.mkdir(parents=True, exist_ok=True)
        with _manifest_lock(root):
            if not (root / fmt.MANIFEST_NAME).exists():
                fmt.write_json_atomic(root / fmt.MANIFEST_NAME, fmt.empty_manifest())
        return cls.open(root)

    @classmethod
    def open(cls, root: str | os.PathLike, strict: bool = True) -> "FeatureStore":
        """Open an existing store. Every file's header is checked against the manifest now, so a
        truncated or mismatched file is an error here, naming it. With ``strict=False`` the broken
        sets are listed in ``store.problems`` and raise only when used."""
        root = Path(root)
        if not root.is_dir():
            raise FormatError(f"{root} is not a folder; create a store with FeatureStore.create({str(root)!r})")
        _, records = fmt.read_manifest(root)
        problems: dict[str, FeatureStoreError] = {}
        for key, record in records.items():
            try:
                checked_header(root, record)
            except FeatureStoreError as exc:
                if strict:
                    raise
                problems[key] = exc
        return cls(root, records, problems)

    def refresh(self) -> "FeatureStore":
        """A fresh view of the store with the manifest as it is on disk now."""
        return FeatureStore.open(self.root, strict=not self.problems)

    def __reduce__(self):
        return (FeatureStore.open, (str(self.root), not self.problems))

    # ---- what is in it ----------------------------------------------------------------------
    def keys(self, pattern: str | None = None, complete_only: bool = False) -> list[str]:
        """Sorted feature-set keys, optionally filtered by a glob such as ``'dinov2/*'``."""
        keys = sorted(self._records)
        if pattern is not None:
            keys = [k for k in keys if fnmatch.fnmatchcase(k, pattern)]
        if complete_only:
            keys = [k for k in keys if self._records[k].complete]
        return keys

    def __contains__(self, key: object) -> bool:
        return key in self._records

    def __iter__(self) -> Iterator[str]:
        return iter(self.keys())

    def __len__(self) -> int:
        return len(self._records)

    def info(self, key: str) -> fmt.FeatureSetRecord:
        """The manifest record of ``key``: dtype, shape, committed rows, checksums, metadata."""
        try:
            return self._records[key]
        except KeyError:
            raise MissingKeyError(self._missing(key)) from None

    def __getitem__(self, key: str) -> FeatureSet:
        return self.get(key)

    def get(self, key: str, allow_incomplete: bool = False) -> FeatureSet:
        """The feature set ``key``. An incomplete set raises unless ``allow_incomplete``; then only
        its committed rows can be read."""
        record = self.info(key)
        if key in self.problems:
            problem = self.problems[key]
            raise type(problem)(str(problem))
        cache_key = (key, allow_incomplete)
        fs = self._open_sets.get(cache_key)
        if fs is None:
            fs = self._open_sets[cache_key] = FeatureSet(self.root, record, allow_incomplete)
        return fs

    def _missing(self, key: str) -> str:
        close = [k for k in self._records if k.split("/")[-1] == str(key).split("/")[-1]][:3]
        hint = f"; did you mean {', '.join(map(repr, close))}?" if close else ""
        return f"no feature set {key!r} in {self.root} (it has {len(self._records)}: {', '.join(self.keys()[:8])}){hint}"

    def __repr__(self) -> str:
        return f"FeatureStore({str(self.root)!r}, {len(self)} feature sets)"

    # ---- writing ----------------------------------------------------------------------------
    def create_feature_set(
        self,
        key: str,
        n_rows: int,
        row_shape: Iterable[int],
        dtype="float16",
        metadata: dict[str, Any] | None = None,
        labels=None,
        resume: bool = False,
    ):
        """Preallocate a feature set and return its :class:`~featstore.writer.FeatureWriter`.

        ``row_shape`` is ``(D,)`` for pooled vectors or ``(T, D)`` for patch grids; ``labels`` an
        optional length-``n_rows`` integer array stored beside the features. With ``resume=True`` an
        unfinished set of the same key, shape, dtype, labels and metadata is continued instead.
        """
        from .writer import create_writer

        fmt.check_key(key)
        if isinstance(n_rows, bool) or not isinstance(n_rows, (int, np.integer)) or n_rows < 0:
            raise ValueError(f"n_rows must be a non-negative integer, got {n_rows!r}")
        row_shape = tuple(int(d) for d in row_shape)
        if any(d < 0 for d in row_shape):
            raise ValueError(f"row_shape must hold non-negative sizes, got {row_shape}")
        name = dtype_name(dtype)
        metadata = dict(metadata or {})
        try:
            metadata = json.loads(json.dumps(metadata))
        except (TypeError, ValueError) as exc:
            raise ValueError(f"feature set {key!r}: metadata must be JSON-serialisable ({exc})") from None
        label_array = _check_labels(labels, int(n_rows), key)
        writer = create_writer(self, key, int(n_rows), row_shape, name, metadata, label_array, resume)
        self._records[key] = writer._record
        return writer

    def delete(self, key: str) -> None:
        """Remove feature set ``key``: its manifest entry (atomically), then its file and ``.pt`` export.

        Refuses with WriterConflictError while a writer holds the set. Readers that mapped the file
        before keep reading their view; new readers no longer see the set.
        """
        record = self.info(key)
        path = fmt.resolve_member(self.root, record.file, f"feature set {key!r}")
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC) if path.exists() else None
        try:
            if fd is not None:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except BlockingIOError:
                    raise WriterConflictError(
                        f"feature set {key!r} ({path}) is being written by another process; stop it before deleting"
                    ) from None
            with _manifest_lock(self.root):
                obj, _ = fmt.read_manifest(self.root)
                obj["feature_sets"].pop(key, None)
                fmt.write_json_atomic(self.root / fmt.MANIFEST_NAME, obj, crash_hook=crashpoint)
            for member in (path, path.with_suffix(".pt")):
                member.unlink(missing_ok=True)
        finally:
            if fd is not None:
                os.close(fd)
        self._records.pop(key, None)
        self._open_sets = {k: v for k, v in self._open_sets.items() if k[0] != key}

    def _read_records(self) -> dict[str, fmt.FeatureSetRecord]:
        _, records = fmt.read_manifest(self.root)
        return records

    def _put_record(self, record: fmt.FeatureSetRecord, must_be_new: bool = False) -> None:
        """Replace one manifest entry, atomically, under the manifest lock (other entries untouched)."""
        with _manifest_lock(self.root):
            obj, _ = fmt.read_manifest(self.root)
            if must_be_new and record.key in obj["feature_sets"]:
                raise WriterConflictError(f"feature set {record.key!r} was created by another process meanwhile")
            obj["feature_sets"][record.key] = record.to_json()
            fmt.write_json_atomic(self.root / fmt.MANIFEST_NAME, obj, crash_hook=crashpoint)
        self._records[record.key] = record
        self._open_sets = {k: v for k, v in self._open_sets.items() if k[0] != record.key}

    # ---- whole-store operations -------------------------------------------------------------
    def batches(self, keys: str | Iterable[str], batch_size: int, **kwargs):
        """The same rows of several feature sets per batch (e.g. layers 10, 15 and 23), with labels."""
        from .loader import BatchLoader

        keys = [keys] if isinstance(keys, str) else list(keys)
        return BatchLoader({k: self[k] for k in keys}, batch_size, **kwargs)

    def dataset(self, keys: str | Iterable[str], labels: bool = True):
        """A map-style torch Dataset over one or several feature sets."""
        from .torch_data import FeatureDataset

        keys = [keys] if isinstance(keys, str) else list(keys)
        return FeatureDataset([self[k] for k in keys], labels=labels)

    def verify(self, keys: Iterable[str] | None = None) -> dict[str, Any]:
        """Recompute every checksum; raises VerificationError naming each damaged set and rows."""
        from .verify import verify_store

        return verify_store(self, list(keys) if keys is not None else self.keys())

    def import_pt(self, path: str | os.PathLike, key: str, dtype=None, metadata: dict | None = None) -> FeatureSet:
        """Import a seed-format ``.pt`` file as feature set ``key``; see featstore.pt_io."""
        from .pt_io import import_pt

        return import_pt(self, path, key, dtype=dtype, metadata=metadata)


def _check_labels(labels, n_rows: int, key: str) -> np.ndarray | None:
    if labels is None:
        return None
    if isinstance(labels, torch.Tensor):
        labels = labels.detach().cpu().numpy()
    arr = np.asarray(labels)
    if arr.shape != (n_rows,):
        raise ValueError(f"feature set {key!r}: labels must have shape ({n_rows},), got {arr.shape}")
    if arr.size and arr.dtype.kind not in "iub":
        raise ValueError(f"feature set {key!r}: labels must be integers, got {arr.dtype}")
    return np.ascontiguousarray(arr, dtype=np.int64)


@contextmanager
def _manifest_lock(root: Path):
    """Serialise manifest read-modify-write cycles between processes (readers never take it)."""
    fd = os.open(root / fmt.LOCK_NAME, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)
