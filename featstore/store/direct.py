"""The direct read path of a feature set: rows read from its file with preadv, not through the mapping.

Many reads are in flight at once (the compiled core's I/O thread pool; ``FEATSTORE_QUEUE_DEPTH``,
default 32), rows adjacent in the file are read by one request, and every byte goes straight into
the caller's buffer: no page of the file is mapped, so a file cut short by someone else gives a
:class:`~featstore.errors.CorruptFileError` naming it, never a SIGBUS.
"""

from __future__ import annotations

import os
import threading
import weakref
from pathlib import Path

import numpy as np

from .. import _backend
from ..errors import CorruptFileError

DEFAULT_QUEUE_DEPTH = 32
QUEUE_DEPTH_ENV = "FEATSTORE_QUEUE_DEPTH"
MAX_REQUEST_BYTES = 1 << 20


def queue_depth() -> int:
    """Reads in flight on the direct path: ``$FEATSTORE_QUEUE_DEPTH`` (1-1024), else 32."""
    raw = os.environ.get(QUEUE_DEPTH_ENV, "")
    if not raw:
        return DEFAULT_QUEUE_DEPTH
    if not raw.isdigit() or not 1 <= int(raw) <= 1024:
        raise ValueError(f"${QUEUE_DEPTH_ENV} must be an integer from 1 to 1024, got {raw!r}")
    return int(raw)


class DirectReader:
    """Reads rows of ``n_rows`` x ``row_bytes`` bytes stored from ``data_start`` in the file at ``path``.

    The file is opened (read-only) on the first read and closed when the reader is collected.
    """

    def __init__(self, path: Path, key: str, data_start: int, row_bytes: int, n_rows: int):
        self.path, self.key = path, key
        self.data_start, self.row_bytes, self.n_rows = data_start, row_bytes, n_rows
        self._fd: int | None = None
        self._lock = threading.Lock()

    def fileno(self) -> int:
        """The open file descriptor (opened on first use)."""
        if self._fd is None:
            with self._lock:
                if self._fd is None:
                    fd = os.open(self.path, os.O_RDONLY | os.O_CLOEXEC)
                    weakref.finalize(self, os.close, fd)
                    self._fd = fd
        return self._fd

    def read(self, rows: np.ndarray, out, depth: int | None = None, max_request_bytes: int = MAX_REQUEST_BYTES) -> None:
        """Read ``rows`` (valid int64 row numbers) into ``out`` (a writable buffer of their bytes),
        ``depth`` requests in flight (default :func:`queue_depth`) of at most ``max_request_bytes``."""
        try:
            _backend.read_rows(
                self.fileno(),
                self.data_start,
                self.row_bytes,
                self.n_rows,
                rows,
                out,
                queue_depth() if depth is None else depth,
                max_request_bytes,
                str(self.path),
            )
        except EOFError as exc:
            raise CorruptFileError(
                f"feature set {self.key!r}: {exc}; the file changed after it was opened (re-open the store, "
                "or run store.verify())"
            ) from None
