"""The direct read path of a feature set: rows read from its file with preadv, not through the mapping.

Many reads are in flight at once (the compiled core's I/O thread pool; ``FEATSTORE_QUEUE_DEPTH``,
default 32), rows adjacent in the file are read by one request, straight into the caller's buffer
(rows of 64 KiB and more: with O_DIRECT, through a small aligned bounce buffer). No page of the file
is mapped, so a file cut short by someone else gives a :class:`~featstore.errors.CorruptFileError`
naming it, never a SIGBUS.
"""

from __future__ import annotations

import mmap
import os
import threading
import weakref
from collections.abc import Sequence
from pathlib import Path
from typing import NamedTuple, NoReturn

import numpy as np

from .. import _backend
from ..errors import CorruptFileError

DEFAULT_QUEUE_DEPTH = 32
QUEUE_DEPTH_ENV = "FEATSTORE_QUEUE_DEPTH"
MAX_REQUEST_BYTES = 1 << 20
PAGE = 4096  # O_DIRECT alignment of offsets, lengths and buffers (a multiple of any common device's block size)
#: rows at least this large are read with O_DIRECT, whole pages around each (at most 2 pages, 12.5%, more
#: than the row), then copied out: no page cache to fill and reclaim, which under a memory cgroup costs
#: more than the extra bytes (docs/performance.md)
PAGE_READ_MIN_ROW_BYTES = 64 << 10
#: a thread's bounce buffer for page reads: as many requests in flight as their pages fit (touched only as used)
PAGE_READ_ARENA_BYTES = 16 << 20
MIN_PIECE_BYTES = 64  # the block read-ahead copies rows out of its pages in pieces of gcd(row_bytes, PAGE) bytes


def aligned_buffer(nbytes: int) -> np.ndarray:
    """A zero-filled, page-aligned, writable byte array (anonymous memory), as O_DIRECT reads need."""
    return np.frombuffer(mmap.mmap(-1, max(1, nbytes)), dtype=np.uint8)


def span_bytes(begin: int, end: int) -> int:
    """Bytes a page-aligned read of file bytes ``[begin, end)`` needs in memory (whole pages)."""
    return -(-end // PAGE) * PAGE - begin // PAGE * PAGE


def queue_depth() -> int:
    """Reads in flight on the direct path: ``$FEATSTORE_QUEUE_DEPTH`` (1-1024), else 32."""
    raw = os.environ.get(QUEUE_DEPTH_ENV, "")
    if not raw:
        return DEFAULT_QUEUE_DEPTH
    if not raw.isdigit() or not 1 <= int(raw) <= 1024:
        raise ValueError(f"${QUEUE_DEPTH_ENV} must be an integer from 1 to 1024, got {raw!r}")
    return int(raw)


class RowDecode(NamedTuple):
    """How a quantised set's codes are decoded as they land (``DirectReader.read``): ``scales`` holds one
    row of float32 scales per out row, one scale per ``group_elems`` codes."""

    scales: np.ndarray
    group_elems: int
    scheme: str
    out_dtype: str


class DirectReader:
    """Reads rows of ``n_rows`` x ``row_bytes`` bytes stored from ``data_start`` in the file at ``path``.

    The file is opened (read-only) on the first read and closed when the reader is collected.
    """

    def __init__(self, path: Path, key: str, data_start: int, row_bytes: int, n_rows: int):
        self.path, self.key = path, key
        self.data_start, self.row_bytes, self.n_rows = data_start, row_bytes, n_rows
        self._fd: int | None = None
        self._direct_fd: int | bool | None = False  # False: not tried yet; None: O_DIRECT refused here
        self._lock = threading.Lock()
        self._arenas = threading.local()  # each thread's page-aligned buffer for page reads, reused
        self.page_reads = row_bytes >= PAGE_READ_MIN_ROW_BYTES

    def fileno(self) -> int:
        """The open file descriptor (opened on first use)."""
        if self._fd is None:
            with self._lock:
                if self._fd is None:
                    fd = os.open(self.path, os.O_RDONLY | os.O_CLOEXEC)
                    weakref.finalize(self, os.close, fd)
                    self._fd = fd
        return self._fd

    def direct_fd(self) -> int | None:
        """The file opened with O_DIRECT (the page cache bypassed), or None where the filesystem refuses it."""
        if self._direct_fd is False:
            with self._lock:
                if self._direct_fd is False:
                    try:
                        fd = os.open(self.path, os.O_RDONLY | os.O_CLOEXEC | getattr(os, "O_DIRECT", 0))
                    except OSError:
                        self._direct_fd = None
                    else:
                        weakref.finalize(self, os.close, fd)
                        self._direct_fd = fd
        return None if self._direct_fd is False else self._direct_fd

    def read_spans(
        self,
        spans: Sequence[tuple[int, int]],
        out: np.ndarray,
        at: Sequence[int],
        max_request_bytes: int = MAX_REQUEST_BYTES,
    ) -> list[int]:
        """Read file bytes ``[begin, end)`` of each span with O_DIRECT, all in flight together, into
        ``out`` (page-aligned, e.g. :func:`aligned_buffer`) from byte ``at[k]`` (a multiple of
        :data:`PAGE`); the whole pages around each span are read. Returns where each span's first
        byte landed in ``out``. Needs :meth:`direct_fd`; a file cut short is a CorruptFileError."""
        dfd = self.direct_fd()
        if dfd is None:
            raise OSError(f"{self.path}: O_DIRECT is not supported here")
        size = os.fstat(self.fileno()).st_size
        end_of_rows = self.data_start + self.n_rows * self.row_bytes
        if size < end_of_rows:
            self._short(f"{self.path} is {size} bytes, but its rows end at byte {end_of_rows} (truncated?)")
        whole = size // PAGE  # a partial last page cannot be read with O_DIRECT: it is read through the cache
        pages, pos, landed, tails = [], [], [], []
        for (begin, end), where in zip(spans, at, strict=True):
            if where % PAGE or where + span_bytes(begin, end) > len(out):
                raise ValueError(f"span {begin}..{end} does not fit out at byte {where} (page-aligned, whole pages)")
            first, last = begin // PAGE, min(-(-end // PAGE), whole)
            pages.append(np.arange(first, last, dtype=np.int64))
            pos.append(np.arange(last - first, dtype=np.int64) + where // PAGE)
            landed.append(where + begin - first * PAGE)
            if end > last * PAGE:
                tails.append((max(begin, last * PAGE), end, where + max(begin, last * PAGE) - first * PAGE))
        try:
            _backend.read_rows(
                dfd,
                0,
                PAGE,
                whole,
                np.concatenate(pages),
                out,
                queue_depth(),
                max_request_bytes,
                str(self.path),
                np.concatenate(pos),
            )
        except EOFError as exc:
            self._short(str(exc))
        for begin, end, where in tails:
            if os.preadv(self.fileno(), [out[where : where + end - begin].data], begin) != end - begin:
                self._short(f"short read from {self.path} at offset {begin} (truncated?)")
        return landed

    def _bounce(self, depth: int, max_request_bytes: int) -> tuple[np.ndarray, int]:
        """This thread's aligned bounce buffer for page reads (:data:`PAGE_READ_ARENA_BYTES`, at least one
        row's pages) and the request size that lets ``depth`` slots fit in it (the core sizes a slot by
        the longest run), one row at least."""
        rb = self.row_bytes
        arena = self._arena(max(PAGE_READ_ARENA_BYTES, -(-rb // PAGE) * PAGE + PAGE))
        return arena, max(rb, min(max_request_bytes, len(arena) // depth - 2 * PAGE))

    def _arena(self, nbytes: int) -> np.ndarray:
        arena = getattr(self._arenas, "buffer", None)
        if arena is None or len(arena) < nbytes:
            arena = self._arenas.buffer = aligned_buffer(nbytes)
        return arena

    def _short(self, what: str) -> NoReturn:
        raise CorruptFileError(
            f"feature set {self.key!r}: {what}; the file changed after it was opened (re-open the store, "
            "or run store.verify())"
        ) from None

    def read(
        self,
        rows: np.ndarray,
        out,
        depth: int | None = None,
        max_request_bytes: int = MAX_REQUEST_BYTES,
        pos: np.ndarray | None = None,
        decode: RowDecode | None = None,
    ) -> None:
        """Read ``rows`` (valid int64 row numbers) into ``out`` (a writable buffer of their bytes; row
        ``rows[i]`` into out row ``pos[i]`` when ``pos`` is given), ``depth`` requests in flight (default
        :func:`queue_depth`) of at most ``max_request_bytes``. Rows of at least
        :data:`PAGE_READ_MIN_ROW_BYTES` are read with O_DIRECT where the filesystem allows it: each
        request reads the whole pages around its rows into a free slot of this thread's aligned bounce
        buffer, and the compiled core copies them out as it lands, so ``depth`` requests stay in flight
        to the end of the call. ``decode`` (only where :meth:`decodes_as_it_reads`): the rows are codes,
        and ``out`` receives them decoded, each as it lands."""
        depth = queue_depth() if depth is None else depth
        fd, bounce = self.fileno(), None
        dfd = self.direct_fd() if self.page_reads and len(rows) else None
        if decode is not None and dfd is None and len(rows):
            raise ValueError(f"feature set {self.key!r}: rows are decoded as they land only on O_DIRECT page reads")
        if dfd is not None:  # O_DIRECT: each request's pages into a slot of the bounce buffer, then copied out
            fd = dfd
            bounce, max_request_bytes = self._bounce(depth, max_request_bytes)
        if bounce is None:
            decode = None  # no rows to decode (page reads are checked above)
        try:
            _backend.read_rows(
                fd,
                self.data_start,
                self.row_bytes,
                self.n_rows,
                rows,
                out,
                depth,
                max_request_bytes,
                str(self.path),
                pos,
                bounce,
                None if decode is None else decode.scales,
                0 if decode is None else decode.group_elems,
                "int8" if decode is None else decode.scheme,
                "float16" if decode is None else decode.out_dtype,
            )
        except EOFError as exc:
            self._short(str(exc))

    def decodes_as_it_reads(self) -> bool:
        """Whether :meth:`read` can decode codes as they land: O_DIRECT page reads of large rows."""
        return self.page_reads and self.direct_fd() is not None
