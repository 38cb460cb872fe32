"""``featstore.json``, the versioned manifest of a store root, and :class:`Manifest`, the one object
that reads it, locks it and replaces it.

Readers never lock: the manifest is only ever replaced whole (temp file, fsync, rename, fsync of the
folder), so a reader sees the old or the new version, never a mix. Writers serialise their
read-modify-write cycles with an ``flock`` on ``.featstore.lock`` beside it.
"""

from __future__ import annotations

import fcntl
import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from ..errors import CorruptFileError, FormatError, FormatVersionError, WriterConflictError
from .crashpoints import crashpoint
from .files import is_nonneg_int, load_untrusted_json, open_regular_file, write_json_atomic
from .header import MAX_HEADER_BYTES
from .record import FeatureSetRecord

FORMAT_NAME = "featstore"
# 2: checksum.entry (every field, the timestamps included) and checksum.export (the .pt export);
# 3: field 'quant' (quantised sets, docs/compact-storage.md). A manifest is written as version 3 only
# while it lists a quantised set, so a featstore that reads 2 refuses it ("upgrade featstore") instead
# of reading codes as values; stores without quantised sets stay readable by it.
FORMAT_VERSION = 3
PLAIN_FORMAT_VERSION = 2
MANIFEST_NAME = "featstore.json"
LOCK_NAME = ".featstore.lock"


def empty_manifest() -> dict[str, Any]:
    """The manifest of a store with no feature sets."""
    return {"format": FORMAT_NAME, "format_version": PLAIN_FORMAT_VERSION, "feature_sets": {}}


def parse_manifest(raw: bytes, where: str) -> tuple[dict[str, Any], dict[str, FeatureSetRecord]]:
    """Validate the bytes of a manifest (``where`` names it in errors); returns the raw object and one
    record per key."""
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise CorruptFileError(
            f"{where}: the manifest is not valid UTF-8 (byte {exc.start}); restore it from a backup"
        ) from None
    obj = load_untrusted_json(text, where, "the manifest")
    if not isinstance(obj, dict) or obj.get("format") != FORMAT_NAME:
        raise FormatError(f"{where}: not a featstore manifest (field 'format' must be {FORMAT_NAME!r})")
    version = obj.get("format_version")
    if not is_nonneg_int(version):
        raise FormatError(f"{where}: field 'format_version' must be an integer, got {version!r}")
    if version < 1:
        raise FormatError(
            f"{where}: field 'format_version' is {version}; featstore writes 1, 2 or 3 (the manifest is damaged)"
        )
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


def read_manifest(root: Path) -> tuple[dict[str, Any], dict[str, FeatureSetRecord]]:
    """Read and validate ``root/featstore.json``; see :func:`parse_manifest`."""
    return Manifest(root).read_raw()


class Manifest:
    """The manifest of the store at ``root``: reading it, and changing one entry at a time under the lock.

    >>> m = Manifest(root)                    # doctest: +SKIP
    >>> m.put(record)                         # replaces one entry atomically, the others untouched
    >>> m.read()["dinov2/layer_10"].complete  # a fresh read of the file
    """

    def __init__(self, root: str | os.PathLike):
        self.root = Path(root)
        self.path = self.root / MANIFEST_NAME

    def __repr__(self) -> str:
        return f"Manifest({str(self.path)!r})"

    # ---- reading ----------------------------------------------------------------------------
    def exists(self) -> bool:
        """Whether the root has a manifest file."""
        return self.path.exists()

    def read_raw(self) -> tuple[dict[str, Any], dict[str, FeatureSetRecord]]:
        """The validated JSON object and one record per key, read from disk now."""
        where = str(self.path)
        try:
            with open_regular_file(self.path, "the manifest") as f:
                size = os.fstat(f.fileno()).st_size
                if size > MAX_HEADER_BYTES:
                    raise CorruptFileError(f"{where} is {size} bytes, larger than any manifest featstore writes")
                raw = f.read()
        except FileNotFoundError:
            raise FormatError(
                f"{where} does not exist: {self.root} is not a featstore store; give the folder that "
                "`featstore extract` or FeatureStore.create wrote"
            ) from None
        return parse_manifest(raw, where)

    def read(self) -> dict[str, FeatureSetRecord]:
        """One validated record per feature-set key, read from disk now."""
        return self.read_raw()[1]

    def get(self, key: str) -> FeatureSetRecord | None:
        """The record of ``key`` as the file says now, or None."""
        return self.read().get(key)

    # ---- changing ---------------------------------------------------------------------------
    def create(self) -> None:
        """Write an empty manifest unless one exists (the root folder must exist)."""
        with self._locked():
            if not self.exists():
                write_json_atomic(self.path, empty_manifest())

    def put(self, record: FeatureSetRecord, must_be_new: bool = False) -> None:
        """Replace the entry of ``record.key`` (or add it), atomically; other entries stay as they are on disk.

        ``must_be_new``: refuse with WriterConflictError when another process added the key meanwhile."""
        with self._editing() as sets:
            if must_be_new and record.key in sets:
                raise WriterConflictError(f"feature set {record.key!r} was created by another process meanwhile")
            sets[record.key] = record.to_json()

    def update(self, key: str, change: Callable[[FeatureSetRecord], None]) -> FeatureSetRecord | None:
        """Apply ``change`` to the record of ``key`` as it is on disk now and write it back, atomically;
        returns the new record (None, and nothing written, when the key is not there)."""
        with self._editing() as sets:
            if key not in sets:
                return None
            record = FeatureSetRecord.from_json(key, sets[key], str(self.path))
            change(record)
            sets[key] = record.to_json()
            return record

    def remove(self, key: str) -> None:
        """Drop the entry of ``key``, atomically (nothing happens when it is not there)."""
        with self._editing() as sets:
            sets.pop(key, None)

    @contextmanager
    def _editing(self) -> Iterator[dict[str, Any]]:
        """Under the lock: the ``feature_sets`` object as on disk now, written back atomically on exit."""
        with self._locked():
            obj, _ = self.read_raw()
            yield obj["feature_sets"]
            # a version-1 manifest is upgraded by its first change
            quantised = any(isinstance(e, dict) and "quant" in e for e in obj["feature_sets"].values())
            obj["format_version"] = FORMAT_VERSION if quantised else PLAIN_FORMAT_VERSION
            write_json_atomic(self.path, obj, crash_hook=crashpoint)

    @contextmanager
    def _locked(self) -> Iterator[None]:
        """Serialise read-modify-write cycles between processes (readers never take it)."""
        fd = os.open(self.root / LOCK_NAME, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)
