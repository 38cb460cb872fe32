"""FeatureStore: a store root (``featstore.json`` plus one safetensors file per feature set), opened,
validated, written and pruned.

Opening reads only the manifest and each file's header. The batches layer adds ``batches()`` and
``dataset()`` to the store and set that ``featstore.FeatureStore`` opens (featstore.batches.readers).
"""

from __future__ import annotations

import fcntl
import fnmatch
import json
import os
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import torch

from .._dtypes import TORCH_DTYPES, dtype_name
from ..errors import FeatureStoreError, FormatError, MissingKeyError, WriterConflictError
from .feature_set import FeatureSet
from .manifest import LOCK_NAME, MANIFEST_NAME, Manifest
from .members import checked_header
from .paths import check_key, resolve_member
from .pt_io import import_metadata, load_pt
from .quant import check_quant
from .record import FeatureSetRecord
from .verify import verify_records
from .writer import FeatureWriter, create_writer

_IMPORT_CHUNK_BYTES = 64 << 20
StoreT = TypeVar("StoreT", bound="FeatureStore")


class FeatureStore:
    """A store root: ``featstore.json`` plus one safetensors file per feature set.

    ``FeatureStore.create(root)`` makes (or opens) a root for writing; ``FeatureStore.open(root)``
    opens an existing one and validates every file's header against the manifest.
    """

    feature_set_type: type[FeatureSet] = FeatureSet  # what get() opens; the batches layer's store opens its own

    def __init__(self, root: Path, records: dict[str, FeatureSetRecord], problems: dict[str, FeatureStoreError]):
        self.root = root
        self.manifest = Manifest(root)
        self._records = records
        self.problems = problems
        self._open_sets: dict[tuple[str, bool], FeatureSet] = {}

    # ---- opening ----------------------------------------------------------------------------
    @classmethod
    def create(cls: type[StoreT], root: str | os.PathLike, strict: bool = True) -> StoreT:
        """Create a store at ``root`` (a new or empty folder), or open it if it is one already (with
        ``strict`` as in :meth:`open`)."""
        root = Path(root)
        if root.exists() and not root.is_dir():
            raise FormatError(f"{root} is a file, not a folder; a store is a folder: choose another path for it")
        root.mkdir(parents=True, exist_ok=True)
        Manifest(root).create()
        return cls.open(root, strict=strict)

    @classmethod
    def open(cls: type[StoreT], root: str | os.PathLike, strict: bool = True) -> StoreT:
        """Open an existing store. Every file's header is checked against the manifest now, so a
        truncated or mismatched file is an error here, naming it. With ``strict=False`` the broken
        sets are listed in ``store.problems`` and raise only when used."""
        root = Path(root)
        if not root.exists():
            raise FormatError(
                f"{root} does not exist; give the folder of a store (one that `featstore extract` or "
                "FeatureStore.create wrote, holding featstore.json)"
            )
        if not root.is_dir():
            raise FormatError(f"{root} is a file, not a store; give the folder that holds featstore.json")
        records = Manifest(root).read()
        problems: dict[str, FeatureStoreError] = {}
        for key, record in records.items():
            try:
                checked_header(root, record)
            except FeatureStoreError as exc:
                if strict:
                    raise
                problems[key] = exc
        return cls(root, records, problems)

    def refresh(self: StoreT) -> StoreT:
        """A fresh view of the store with the manifest as it is on disk now."""
        return type(self).open(self.root, strict=not self.problems)

    def __reduce__(self):
        return (type(self).open, (str(self.root), not self.problems))

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

    def info(self, key: str) -> FeatureSetRecord:
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
        # A writer of this store shares the live record: a set opened before its last commit is stale.
        if fs is None or fs.record.committed != record.committed or fs.record.complete != record.complete:
            fs = self._open_sets[cache_key] = self.feature_set_type(self.root, record, allow_incomplete)
        return fs

    def _missing(self, key: str) -> str:
        close = [k for k in self._records if k.split("/")[-1] == str(key).split("/")[-1]][:3]
        hint = f"; did you mean {', '.join(map(repr, close))}?" if close else ""
        return (
            f"no feature set {key!r} in {self.root} (it has {len(self._records)}: {', '.join(self.keys()[:8])}){hint}"
        )

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
        quant: str | None = None,
    ) -> FeatureWriter:
        """Preallocate a feature set and return its :class:`~featstore.store.writer.FeatureWriter`.

        ``row_shape`` is ``(D,)`` for pooled vectors or ``(T, D)`` for patch grids; ``labels`` an
        optional length-``n_rows`` integer array stored beside the features. With ``resume=True`` an
        unfinished set of the same key, shape, dtype, labels and metadata is continued instead.
        ``quant`` ("int8" or "float8_e4m3") stores the rows compact (docs/compact-storage.md): the
        writer takes rows of ``dtype`` (float16, bfloat16 or float32) and quantises them.
        """
        check_key(key)
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
        scheme = None if quant is None else check_quant(quant, name, row_shape, key)
        writer = create_writer(self.manifest, key, int(n_rows), row_shape, name, metadata, label_array, resume, scheme)
        self._records[key] = writer.record  # live: the writer's commits show in info() and get()
        return writer

    def delete(self, key: str) -> None:
        """Remove feature set ``key``: its manifest entry (atomically), then its file and ``.pt`` export.

        Refuses with WriterConflictError while a writer holds the set. Readers that mapped the file
        before keep reading their view; new readers no longer see the set.
        """
        record = self.info(key)
        try:
            path: Path | None = resolve_member(self.root, record.file, f"feature set {key!r}")
        except FormatError:  # the entry names a file outside the root: drop the entry, touch no file
            path = None
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC) if path is not None and path.is_file() else None
        try:
            if fd is not None:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except BlockingIOError:
                    raise WriterConflictError(
                        f"feature set {key!r} ({path}) is being written by another process; stop it before deleting"
                    ) from None
            self.manifest.remove(key)
            for member in (path, path.with_suffix(".pt")) if path is not None else ():
                member.unlink(missing_ok=True)
        finally:
            if fd is not None:
                os.close(fd)
        self._records.pop(key, None)
        self.problems.pop(key, None)
        self._open_sets = {k: v for k, v in self._open_sets.items() if k[0] != key}

    def discard_if_empty(self, remove_folder: bool = False) -> bool:
        """Remove ``featstore.json`` and the lock file (and with ``remove_folder`` the root folder) when
        the store holds no feature set and no other file: a store a command created but could not
        fill. Returns whether it did."""
        if self.manifest.read() or not self.root.is_dir():
            return False
        names = {p.name for p in self.root.iterdir()}
        if not names <= {MANIFEST_NAME, LOCK_NAME}:
            return False
        for name in names:
            (self.root / name).unlink(missing_ok=True)
        if remove_folder:
            self.root.rmdir()
        return True

    # ---- whole-store operations -------------------------------------------------------------
    def verify(self, keys: Iterable[str] | None = None) -> dict[str, Any]:
        """Recompute every checksum; raises VerificationError naming each damaged set and rows."""
        keys = list(keys) if keys is not None else self.keys()
        return verify_records(self.root, [self.info(k) for k in keys])

    def import_pt(self, path: str | os.PathLike, key: str, dtype=None, metadata: dict | None = None) -> FeatureSet:
        """Import a file in the ``.pt`` export format as a finished feature set ``key`` (optionally cast to ``dtype``).

        The file is loaded with ``torch.load(weights_only=True, mmap=True)`` and validated first (see
        featstore.store.pt_io); its rows are copied in chunks of about 64 MiB."""
        loaded = load_pt(path)
        features: torch.Tensor = loaded["features"]
        target = dtype_name(dtype) if dtype is not None else dtype_name(features.dtype)
        labels = loaded["labels"]
        n = features.shape[0]
        writer = self.create_feature_set(
            key,
            n_rows=n,
            row_shape=tuple(features.shape[1:]),
            dtype=target,
            metadata=import_metadata(path, loaded, metadata),
            labels=labels.to(torch.int64) if labels is not None else None,
        )
        row_bytes = max(1, features[0].numel() * features.element_size()) if n else 1
        chunk = max(1, _IMPORT_CHUNK_BYTES // row_bytes)
        with writer:
            for start in range(0, n, chunk):
                writer.write(start, features[start : start + chunk].to(TORCH_DTYPES[target]))
        return self[key]


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
