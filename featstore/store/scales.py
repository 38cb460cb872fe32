"""The scales of a quantised set on the direct path, where the mapping would fault them in one page at a time.

A batch of rows read directly also needs those rows' scales (4 bytes a vector: 1 KiB a row of a
257-token grid). Through the mapping, out of core, each row's scales can be a page fault: one
synchronous disk read at a time, beside codes read many in flight. So the direct
path holds every scale of the set in memory, read once in large requests, when they are at most
:data:`HOLD_BYTES` (4 bytes a vector: 32 MiB holds the scales of 6 GB of 768-wide int8
vectors, or of 3 GB of 384-wide tokens); larger ones are read with each batch, all in flight at once.
"""

from __future__ import annotations

import threading
from pathlib import Path

import numpy as np

from .. import _backend
from .direct import DirectReader, aligned_buffer

HOLD_BYTES = 32 << 20


class DirectScales:
    """Gathers the scales of rows of the quantised set ``key`` without the mapping: ``row_bytes`` of
    scales a row, stored from byte ``scales_at`` of the file at ``path``."""

    def __init__(self, path: Path, key: str, scales_at: int, row_bytes: int, n_rows: int):
        self.row_bytes, self.n_rows = row_bytes, n_rows
        self.scales_at = scales_at
        self.rows = DirectReader(path, key, scales_at, row_bytes, n_rows)
        self.hold = n_rows * row_bytes <= HOLD_BYTES
        self.in_memory: np.ndarray | None = None  # every scale, once held
        self._lock = threading.Lock()

    def gather(self, rows: np.ndarray, out: np.ndarray) -> None:
        """The scales of ``rows`` (valid int64 row numbers), row after row, into the byte array ``out``."""
        if not self.hold:
            self.rows.read(rows, out)
            return
        _backend.gather(self.held(), self.row_bytes, rows, out, 1)

    def held(self) -> np.ndarray:
        """Every scale of the set (read on first use, with O_DIRECT where the filesystem allows it)."""
        if self.in_memory is None:
            with self._lock:
                if self.in_memory is None:
                    self.in_memory = self._read_all()
        return self.in_memory

    def _read_all(self) -> np.ndarray:
        nbytes = self.n_rows * self.row_bytes
        if self.rows.direct_fd() is not None:
            buf = aligned_buffer(nbytes + 2 * 4096)
            (at,) = self.rows.read_spans([(self.scales_at, self.scales_at + nbytes)], buf, [0])
            return buf[at : at + nbytes]
        whole = DirectReader(self.rows.path, self.rows.key, self.scales_at, max(1, nbytes), 1)
        buf = np.empty(max(1, nbytes), dtype=np.uint8)
        whole.read(np.zeros(1, dtype=np.int64), buf)
        return buf[:nbytes]
