"""Several ranks of one torch.distributed job writing the same feature sets.

The roles:

- **rank 0 owns** every feature set of the job: it creates or resumes each with an ordinary
  :class:`~featstore.store.writer.FeatureWriter`, which holds the set's exclusive ``flock`` until the job
  ends. An unrelated writer (another process, another job's rank 0) still gets WriterConflictError.
- **every rank writes** its rows through a :class:`ShardWriter` (:meth:`RankShard.join`): the same
  file, opened without taking the lock, and only while the lock is held, i.e. after rank 0 took it
  (the job's ranks join after a barrier that follows rank 0's taking). A shard writer's ``commit()``
  makes its rows durable (``fdatasync``) and records them in this rank's progress file,
  ``.featstore.progress/<key>.rank-<r>.json`` in the store root, replaced atomically.
- **only rank 0 writes the manifest**: :func:`fold_progress` merges the progress files of a set into
  its manifest entry (row ranges, block checksums) and removes them; the extraction calls it at the
  start of a run (rows that ranks of a killed job committed) and after the final barrier, before
  marking the set complete.

A progress file names the set's header checksum and creation time, so one left by a deleted and
recreated set is recognised as stale and ignored (its rows are simply written again).
"""

from __future__ import annotations

import fcntl
import json
import os
import re
from pathlib import Path

from ..errors import FeatureStoreError, WriterConflictError
from .files import fsync_dir, open_regular_file, write_json_atomic
from .header import read_header
from .paths import resolve_member
from .ranges import merge_ranges
from .record import FeatureSetRecord
from .store import FeatureStore
from .writer import FeatureWriter, expected_header

PROGRESS_DIR = ".featstore.progress"
_PROGRESS_FORMAT = "featstore-rank-progress"

__all__ = ["PROGRESS_DIR", "RankShard", "ShardWriter", "fold_progress", "progress_files"]


def _progress_path(root: Path, key: str, rank: int) -> Path:
    return root / PROGRESS_DIR / f"{key}.rank-{rank:05d}.json"


def progress_files(root: Path, key: str) -> list[Path]:
    """The progress files of feature set ``key`` that ranks have left in the store ``root``."""
    folder = (root / PROGRESS_DIR / key).parent
    name = re.compile(re.escape(key.rsplit("/", 1)[-1]) + r"\.rank-\d{5,}\.json")
    return sorted(p for p in folder.iterdir() if name.fullmatch(p.name)) if folder.is_dir() else []


def _read_progress(path: Path, record: FeatureSetRecord) -> list[tuple[int, int]] | None:
    """The committed ranges a progress file records for ``record``'s set; None when it is another
    set's, stale (the set was recreated) or unreadable (its rows are then written again)."""
    try:
        with open_regular_file(path, "a rank's progress file") as f:  # a FIFO here must not hang rank 0
            obj = json.loads(f.read(1 << 20).decode("utf-8"))
    except (OSError, ValueError, RecursionError, FeatureStoreError):  # unreadable, not JSON, absurd, not a file
        return None
    if not isinstance(obj, dict) or obj.get("format") != _PROGRESS_FORMAT or obj.get("key") != record.key:
        return None
    if obj.get("header_crc32") != record.header_crc32 or obj.get("created_at") != record.created_at:
        return None
    ranges = obj.get("committed")
    if not isinstance(ranges, list):
        return None
    out = []
    for r in ranges:
        if (
            not isinstance(r, list)
            or len(r) != 2
            or not all(isinstance(x, int) and not isinstance(x, bool) for x in r)
            or not 0 <= r[0] < r[1] <= record.n_rows
        ):
            return None
        out.append((r[0], r[1]))
    return out


def fold_progress(writer: FeatureWriter) -> int:
    """Move the rows that ranks recorded in their progress files for ``writer``'s set (which the
    caller owns) into the manifest, then remove those files. Returns the rows newly committed."""
    files = progress_files(writer.manifest.root, writer.key)
    ranges: list[tuple[int, int]] = []
    for path in files:
        ranges += _read_progress(path, writer.record) or []
    added = writer.adopt(ranges)  # the manifest is durable before the progress files go
    for path in files:
        path.unlink(missing_ok=True)
    if files:
        fsync_dir(files[0].parent)
    return added


class ShardWriter(FeatureWriter):
    """One rank's writer of a feature set that rank 0 owns: writes rows like a FeatureWriter, but its
    ``commit()`` records them in the rank's progress file instead of the manifest (see the module doc)."""

    def __init__(self, shard: RankShard, record: FeatureSetRecord, fd: int, path: Path, data_start: int):
        super().__init__(shard.store.manifest, record, fd, path, data_start)
        self._shard = shard
        self._mine: list[tuple[int, int]] = []

    def commit(self) -> None:
        """Make the rows written so far durable and record them in this rank's progress file."""
        self._check_open()
        if not self._pending:
            return
        os.fdatasync(self._fd)
        self._record.committed = merge_ranges([*self._record.committed, *self._pending])
        self._mine = merge_ranges([*self._mine, *self._pending])
        self._pending = []
        write_json_atomic(
            _progress_path(self._shard.store.root, self.key, self._shard.rank),
            {
                "format": _PROGRESS_FORMAT,
                "key": self.key,
                "rank": self._shard.rank,
                "header_crc32": self._record.header_crc32,
                "created_at": self._record.created_at,
                "committed": [list(r) for r in self._mine],
            },
        )

    def adopt(self, ranges) -> int:
        raise WriterConflictError(f"feature set {self.key!r}: a shard writer cannot adopt rows; rank 0's owner does")

    def finish(self) -> None:
        raise WriterConflictError(
            f"feature set {self.key!r}: a shard writer cannot finish the set; rank 0 does, "
            "after every rank has committed its rows"
        )


class RankShard:
    """The shard writers of one rank of a job, one per feature set (see the module doc)."""

    def __init__(self, store: FeatureStore, rank: int):
        self.store = store
        self.rank = int(rank)
        self.writers: dict[str, ShardWriter] = {}

    def join(self, key: str, metadata: dict, owner: bool = False) -> ShardWriter:
        """Open a writer of ``key``, which rank 0 of this job has created and holds; refuse when nobody
        holds it or its header is not what this rank would write (other model, dtype, labels).
        ``owner``: this process is the one holding the lock (rank 0), so there is nothing to check; on
        NFS, where flock is emulated with per-process POSIX locks, probing it here would release it."""
        record = self.store.manifest.get(key)
        if record is None or record.complete:
            state = "does not exist" if record is None else "is already complete"
            raise WriterConflictError(f"feature set {key!r} {state}; ranks join a set only after rank 0 created it")
        path = resolve_member(self.store.root, record.file, f"feature set {key!r}")
        fd = os.open(path, os.O_RDWR | os.O_CLOEXEC)
        try:
            if not owner:
                _check_owned(fd, key, path)
            on_disk, raw = read_header(path)
            if raw != expected_header(key, record.layout, metadata):
                raise WriterConflictError(
                    f"{path}: its header differs from what rank {self.rank} would write "
                    "(another model, dtype or label set?); every rank must run the same arguments"
                )
            (self.store.root / PROGRESS_DIR / key).parent.mkdir(parents=True, exist_ok=True)
            writer = ShardWriter(self, record, fd, path, on_disk.data_start)
        except BaseException:
            os.close(fd)
            raise
        self.writers[key] = writer
        return writer

    def commit(self) -> None:
        """Commit every shard writer of this rank."""
        for w in self.writers.values():
            w.commit()

    def close(self) -> None:
        """Close every writer without committing."""
        for w in self.writers.values():
            w.close()


def _check_owned(fd: int, key: str, path: Path) -> None:
    """A shard joins only a set whose lock is held (by its job's rank 0); taking it here means nobody does."""
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return
    fcntl.flock(fd, fcntl.LOCK_UN)
    raise WriterConflictError(
        f"feature set {key!r} ({path}) is not held by rank 0 of a job; a shard writer writes "
        "only while its job's rank 0 owns the set"
    )
