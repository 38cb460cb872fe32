"""FeatureSet: one stored feature matrix, memory-mapped read-only, indexed like a numpy array.

Opening checks the file's header against the manifest entry; rows are read on demand from the
mapping, so opening 10 GB of features costs a few pages of memory.
"""

from __future__ import annotations

import copy
import functools
import os
import weakref
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .. import _backend
from .._dtypes import TORCH_DTYPES, byte_view, dtype_name
from ..errors import CorruptFileError, IncompleteFeatureSetError
from ..indexing import normalize_rows
from .checksums import file_crc32
from .direct import DirectReader, RowDecode
from .header import FILE_FORMAT_VERSION
from .manifest import MANIFEST_NAME, Manifest
from .members import checked_header
from .memory import READ_MODES, AutoRead, sampled_residency
from .pt_io import write_pt
from .quant import LOGICAL_DTYPES, Quant, group_elems, scales_shape
from .record import FeatureSetRecord
from .scales import DirectScales

DEQUANT_DTYPES = tuple(TORCH_DTYPES[name] for name in LOGICAL_DTYPES)


class FeatureSet:
    """One stored feature matrix of shape ``(N, *row_shape)``, memory-mapped read-only.

    Indexing follows numpy along the first axis and returns torch tensors: ``fs[3]``, ``fs[-1]``,
    ``fs[10:20]`` (a zero-copy view), ``fs[[5, 1, 5]]``, ``fs[mask]``. ``fs.gather(idx, out=buf)``
    fills a preallocated tensor. Views are copy-on-write: writing to them never touches the file.

    Rows are read through the mapping (``read="mmap"``) or with preadv straight into the output
    (``read="direct"``, for sets larger than memory); ``read="auto"`` picks by the memory this
    process may use (featstore.store.memory). Both give the same bytes.

    For code that reads the bytes itself (the CUDA path, other loaders): ``mapped_file`` is the
    compiled core's mapping of the whole file and ``data`` a memoryview of the feature rows in it
    (``nbytes`` bytes from ``header.data_start``, ``row_bytes`` per row).

    A quantised set (``quant`` is not None, docs/compact-storage.md) stores one-byte codes and
    ``scales``; ``dtype`` is its logical dtype, and every gather dequantises (to ``dtype``, or to the
    ``dtype=`` asked for). ``data``, ``to_torch()`` and ``to_numpy()`` stay the raw stored codes.
    """

    def __init__(self, root: Path, record: FeatureSetRecord, allow_incomplete: bool = False):
        self.root = root
        self.record = copy.deepcopy(record)  # a snapshot: a writer in this process may move on
        self.path, self.header, _ = checked_header(root, record)
        if not record.complete and not allow_incomplete:
            raise IncompleteFeatureSetError(
                f"feature set {record.key!r} ({self.path}) has {record.rows_committed} of {record.n_rows} rows committed; "
                "resume its writer, or open it with store.get(key, allow_incomplete=True)"
            )
        self.mapped_file = _backend.MappedFile(str(self.path))
        expected = self.header.data_start + record.layout.data_bytes
        if self.mapped_file.size != expected:
            raise CorruptFileError(
                f"{self.path}: file is {self.mapped_file.size} bytes, expected {expected}; it changed or was truncated"
            )
        start = self.header.data_start
        self.data = memoryview(self.mapped_file)[start : start + record.layout.features_bytes]
        scales_at = start + record.layout.scales_begin
        self._scales = memoryview(self.mapped_file)[scales_at : scales_at + record.layout.scales_bytes]
        self._labels: torch.Tensor | None = None
        self._committed_starts = np.array([a for a, _ in record.committed], dtype=np.int64)
        self._committed_ends = np.array([b for _, b in record.committed], dtype=np.int64)
        self.direct = DirectReader(self.path, record.key, start, self.row_bytes, record.n_rows)
        self.direct_scales = (
            None
            if self.quant is None
            else DirectScales(self.path, record.key, scales_at, self._scale_row_bytes, record.n_rows)
        )
        self._auto_read: AutoRead | None = None

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
        """What gathers return: the stored dtype, or for a quantised set its logical dtype."""
        return TORCH_DTYPES[self.quant.dtype] if self.quant is not None else self.storage_dtype

    @property
    def storage_dtype(self) -> torch.dtype:
        """The dtype of the stored tensor "features" (int8 or float8_e4m3fn codes for a quantised set)."""
        return TORCH_DTYPES[self.record.dtype]

    @property
    def quant(self) -> Quant | None:
        """How the set is quantised (``scheme``, logical ``dtype``), or None for a raw set."""
        return self.record.quant

    @property
    def scales(self) -> torch.Tensor | None:
        """The float32 scales of a quantised set, shape ``(N, *row_shape[:-1])`` (a copy), or None."""
        if self.quant is None:
            return None
        shape = scales_shape(len(self), self.row_shape)
        return torch.from_numpy(np.frombuffer(self._scales, dtype=np.float32).copy()).view(shape)

    @functools.cached_property
    def row_bytes(self) -> int:
        """Bytes a stored row has (fixed for the set's life; read on every gather, so kept)."""
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
        dtype = self.record.dtype if self.quant is None else f"{self.quant.dtype} as {self.quant.scheme}"
        return f"FeatureSet({self.key!r}, shape={self.shape}, dtype={dtype}, {state})"

    # ---- zero-copy views --------------------------------------------------------------------
    def to_torch(self) -> torch.Tensor:
        """The whole stored matrix as a tensor view of the mapped file (no copy; writes stay private).
        For a quantised set these are the raw codes (see ``scales``; ``fs[:]`` dequantises)."""
        if self.nbytes == 0:
            return torch.empty(self.shape, dtype=self.storage_dtype)
        flat = torch.frombuffer(self.data, dtype=torch.uint8)
        return flat.view(self.storage_dtype).view(self.shape)

    def to_numpy(self) -> np.ndarray:
        """The whole stored matrix as a numpy view (no copy); bfloat16 and float8 have no numpy dtype,
        use to_torch()."""
        if self.record.dtype in ("bfloat16", "float8_e4m3"):
            raise TypeError(
                f"feature set {self.key!r} stores {self.record.dtype}, which numpy cannot represent; use to_torch()"
            )
        return np.frombuffer(self.data, dtype=np.dtype(self.record.dtype)).reshape(self.shape)

    @property
    def labels(self) -> torch.Tensor | None:
        """Per-row int64 labels stored with the features, or None."""
        if not self.record.has_labels:
            return None
        if self._labels is None:
            start = self.header.data_start + self.record.layout.features_bytes
            raw = memoryview(self.mapped_file)[start : start + self.record.layout.labels_bytes]
            arr = np.frombuffer(raw, dtype=np.int64) if len(raw) else np.empty(0, np.int64)
            if arr.ctypes.data % 8:
                arr = arr.copy()  # unaligned (odd row sizes): a small private copy
            self._labels = torch.from_numpy(arr)
        return self._labels

    def advise(self, advice: str) -> None:
        """madvise the feature data: 'random', 'sequential', 'willneed' (prefetch into page cache), 'normal'."""
        if self.nbytes:
            self.mapped_file.advise(self.header.data_start, self.nbytes, advice)

    def resident_bytes(self) -> int:
        """About how many bytes of the feature data are in memory now (the page cache, whoever read them):
        ``mincore`` on a sample of its pages (featstore.store.memory.sampled_residency)."""
        return sampled_residency(self.mapped_file.resident_pages, self.header.data_start, self.nbytes)

    # ---- reading rows -----------------------------------------------------------------------
    def __getitem__(self, index) -> torch.Tensor:
        if isinstance(index, tuple):
            if not index or index[0] is Ellipsis or index[0] is None:
                self.check_all_committed()
                return self._whole()[index]
            first, rest = index[0], index[1:]
            head = self[first]
            n_lead = 0 if _is_scalar_index(first) else 1
            return head[(slice(None),) * n_lead + rest]
        if isinstance(index, slice):
            start, stop, step = index.indices(len(self))
            if step > 0 and self.quant is None:
                if not self.complete:
                    self.check_committed(np.arange(start, stop, step, dtype=np.int64))
                return self.to_torch()[start:stop:step]
            return self.gather(np.arange(start, stop, step, dtype=np.int64))
        rows, lead = normalize_rows(index, len(self))
        out = self._gather_checked(rows)
        return out.view(*lead, *self.row_shape)

    def gather(self, index, out: torch.Tensor | None = None, read: str = "auto", dtype=None) -> torch.Tensor:
        """Copy the rows ``index`` (numpy-style) into ``out`` (allocated when None) and return it.

        ``out`` must be a contiguous CPU tensor (pinned is fine) of ``dtype`` with ``len(rows)``
        rows; the copy runs in the compiled core with the GIL released. ``dtype`` defaults to this
        set's dtype; a quantised set dequantises to float16, bfloat16 or float32 in the core, a raw
        set converts after the copy.
        ``read``: "mmap", "direct" or "auto" (see :meth:`read_path`).
        """
        path = self.read_path(read)
        rows, lead = normalize_rows(index, len(self))
        if lead == ():
            lead = (1,)
        want = self.dtype if dtype is None else TORCH_DTYPES[dtype_name(dtype)]
        result = self._gather_checked(rows, out, path, want)
        return result if out is not None else result.view(*lead, *self.row_shape)

    def read_path(self, read: str = "auto") -> str:
        """The path ``read`` means for this set: "mmap" or "direct" as asked; "auto" is "mmap" when the
        part of the set not in memory already fits in the memory this process may use, else "direct"
        (decided once per set; a choice that rests on cached pages is made again once a second old:
        :class:`featstore.store.memory.AutoRead`)."""
        if read != "auto":
            if read not in READ_MODES:
                raise ValueError(f"read must be one of {', '.join(map(repr, READ_MODES))}, got {read!r}")
            return read
        if self._auto_read is None:  # a proxy: no cycle, so a set let go unmaps at once, not at the next gc
            self._auto_read = AutoRead([weakref.proxy(self)])
        return self._auto_read.path()

    def _gather_checked(
        self, rows: np.ndarray, out: torch.Tensor | None = None, read: str = "mmap", dtype: torch.dtype | None = None
    ) -> torch.Tensor:
        self.check_committed(rows)
        dtype = dtype or self.dtype
        expected = (len(rows), *self.row_shape)
        if out is None:
            out = torch.empty(expected, dtype=dtype)
        else:
            _check_out(out, expected, dtype, self.key)
        if self.quant is None and dtype != self.storage_dtype:
            raw = torch.empty(expected, dtype=self.storage_dtype)
            self.gather_into(rows, raw, read=read)
            out.copy_(raw)
            return out
        if self.quant is not None and dtype not in DEQUANT_DTYPES:
            raise ValueError(
                f"feature set {self.key!r} is quantised; gathers return float16, bfloat16 or float32, not {dtype}"
            )
        self.gather_into(rows, out, read=read)
        return out

    def _whole(self) -> torch.Tensor:
        """Every row: the mapped matrix, or for a quantised set the dequantised one."""
        return self.to_torch() if self.quant is None else self.gather(np.arange(len(self), dtype=np.int64))

    def gather_into(self, rows: np.ndarray, out: torch.Tensor, threads: int = 0, read: str = "mmap") -> None:
        """Hot path for loaders: ``rows`` is a valid int64 array, ``out`` a matching contiguous tensor.
        ``threads``: 0 uses the gather pool, 1 copies on the calling thread (mmap path);
        ``read``: "mmap" (the mapping) or "direct" (preadv, ``FEATSTORE_QUEUE_DEPTH`` reads in flight).
        A quantised set dequantises into ``out`` (float16, bfloat16 or float32). The direct path reads the
        scales (4 bytes a vector) without the mapping too; rows of 64 KiB and more (O_DIRECT page reads)
        are decoded from their pages as each lands, smaller ones read into a staging buffer first."""
        if self.row_bytes and len(rows) and self.quant is not None:
            self._dequant_into(rows, out, threads, read)
        elif self.row_bytes and len(rows):
            if read == "direct":
                self.direct.read(rows, byte_view(out))
            else:
                _backend.gather(self.data, self.row_bytes, rows, byte_view(out), threads)

    def _dequant_into(self, rows: np.ndarray, out: torch.Tensor, threads: int, read: str) -> None:
        assert self.quant is not None
        row_elems, group = self.row_bytes, group_elems(self.row_shape)
        if read == "direct" and self.direct.decodes_as_it_reads():  # each row decoded from its pages as it lands
            assert self.direct_scales is not None
            batch_scales = np.empty(len(rows) * self._scale_row_bytes, dtype=np.uint8)
            self.direct_scales.gather(rows, batch_scales)
            codec = RowDecode(batch_scales, group, self.quant.scheme, dtype_name(out.dtype))
            self.direct.read(rows, byte_view(out), decode=codec)
            return
        src, scales, picks = self.data, self._scales, rows
        if read == "direct":
            staged = np.empty(len(rows) * self.row_bytes, dtype=np.uint8)
            self.direct.read(rows, staged)
            self.dequantise_codes(staged, rows, out, threads, read="direct")
            return
        out_name = dtype_name(out.dtype)
        _backend.dequant_gather(
            src, scales, row_elems, group, picks, byte_view(out), self.quant.scheme, out_name, threads
        )

    @property
    def _scale_row_bytes(self) -> int:
        """Bytes of scales a row of a quantised set has (4 a vector along the last axis)."""
        return (self.row_bytes // group_elems(self.row_shape)) * 4 if self.row_bytes else 0

    def dequantise_codes(
        self, codes: np.ndarray, rows: np.ndarray, out: torch.Tensor, threads: int = 0, read: str = "mmap"
    ) -> None:
        """Dequantise ``codes`` (row i: the stored codes of row ``rows[i]`` of this quantised set, read
        elsewhere, e.g. by a block cache) into ``out`` with those rows' scales, read as ``read`` says:
        "mmap" through the mapping, "direct" without it (featstore.store.scales)."""
        assert self.quant is not None and self.direct_scales is not None
        row_elems, group = self.row_bytes, group_elems(self.row_shape)
        scale_bytes = self._scale_row_bytes
        staged_scales = np.empty(len(rows) * scale_bytes, dtype=np.uint8)
        if read == "direct":
            self.direct_scales.gather(rows, staged_scales)
        else:
            _backend.gather(self._scales, scale_bytes, rows, staged_scales, threads)
        _backend.dequant_gather(
            codes,
            staged_scales,
            row_elems,
            group,
            np.arange(len(rows), dtype=np.int64),
            byte_view(out),
            self.quant.scheme,
            dtype_name(out.dtype),
            threads,
        )

    def check_all_committed(self) -> None:
        """Raise IncompleteFeatureSetError unless every row is committed."""
        if not self.complete and self.rows_committed != len(self):
            raise IncompleteFeatureSetError(
                f"feature set {self.key!r}: rows outside {self.committed_ranges[:5]} are not committed"
            )

    def check_committed(self, rows: np.ndarray) -> None:
        """Raise IncompleteFeatureSetError naming the first of ``rows`` (valid int64 row numbers) not committed yet."""
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

    # ---- export -----------------------------------------------------------------------------
    def export_pt(self, path: str | os.PathLike | None = None) -> Path:
        """Write the ``.pt`` export format beside the safetensors file (or to ``path``) and return the path.
        The manifest records the checksum of the export beside the file (``checksum.export``).

        The features are saved straight from the mapped file (no private copy of the matrix); labels
        are included when the set has them. A quantised set is exported dequantised, as its logical
        dtype (metadata ``featstore_quant`` says it was quantised), so ``features`` stays plain values."""
        self.check_all_committed()
        target = Path(path) if path is not None else self.path.with_suffix(".pt")
        metadata = {
            "featstore_key": self.key,
            "featstore_format_version": FILE_FORMAT_VERSION,
            "dtype": dtype_name(self.dtype),
            **({"featstore_quant": self.quant.to_json()} if self.quant is not None else {}),
            **self.metadata,
        }
        write_pt(target, self._whole(), self.labels, metadata)
        if path is None or target.resolve() == self.path.with_suffix(".pt").resolve():
            crc, size = file_crc32(target)

            def record_export(record: FeatureSetRecord) -> None:
                record.export_crc32, record.export_bytes = crc, size

            # the manifest covers the export beside the file: `verify` checks it, `extract` rewrites it
            Manifest(self.root).update(self.key, record_export)
            record_export(self.record)
        return target

    def __reduce__(self):
        # Worker processes reopen the file from the same manifest snapshot; nothing mapped is pickled.
        return (_reopen_feature_set, (type(self), str(self.root), self.record.to_json(), self.key, not self.complete))


def _reopen_feature_set(cls: type[FeatureSet], root: str, record_json: dict, key: str, allow_incomplete: bool):
    record = FeatureSetRecord.from_json(key, record_json, f"{root}/{MANIFEST_NAME}")
    return cls(Path(root), record, allow_incomplete=allow_incomplete)


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
