"""Pure-numpy fallback for featstore._core: same names, signatures, errors and messages.

Buffer access is uniform across backends: ``memoryview(mapped_file)`` (and so ``np.frombuffer`` /
``torch.frombuffer``) gives a writable 1-D byte view. Here MappedFile subclasses ``mmap.mmap``;
only ``path``, ``size``, ``advise``, ``resident_pages`` and the buffer protocol are part of the portable interface
(the inherited mmap methods are not; never call ``close()``).
"""

from __future__ import annotations

import os

import numpy as np

from .codecs import E4M3_VALUES, OUT_ITEM, check_codec, to_bfloat16_bits
from .mapping import MappedFile

__all__ = [
    "MappedFile",
    "dequant_gather",
    "gather",
    "get_num_threads",
    "permute_pcg64",
    "read_rows",
    "set_num_threads",
]

_PAGE = 4096  # O_DIRECT alignment of a bounce read (csrc/direct_read.cpp's kPage)


def _byte_view(obj, name: str, writable: bool) -> np.ndarray:
    try:
        mv = memoryview(obj)
    except TypeError:
        if not hasattr(obj, "__dlpack__"):
            raise TypeError(
                f"{name} must support the buffer protocol (or __dlpack__), got {type(obj).__name__}"
            ) from None
        mv = np.from_dlpack(obj).data
    if not mv.c_contiguous:
        raise ValueError(f"{name} must be C-contiguous")
    if writable and mv.readonly:
        raise ValueError(f"{name} is read-only")
    return np.frombuffer(mv, dtype=np.uint8)


def _check_index_array(indices, name: str = "indices") -> None:
    if not isinstance(indices, np.ndarray):
        raise TypeError(f"{name} must be a numpy int64 array, got {type(indices).__name__}")
    if indices.dtype != np.int64 or not indices.dtype.isnative:
        raise TypeError(f"{name} must have dtype int64, got {indices.dtype}")
    if indices.ndim != 1:
        raise ValueError(f"{name} must be 1-D, got {indices.ndim}-D")
    if not indices.flags.c_contiguous:
        raise ValueError(f"{name} must be C-contiguous")


def _check_out(o: np.ndarray, n: int, row_bytes: int) -> int:
    need = n * row_bytes
    if o.size < need:
        raise ValueError(f"out has {o.size} bytes but {n} indices x {row_bytes} row_bytes need {need} bytes")
    return need


def _check_in_range(indices: np.ndarray, n_rows: int) -> None:
    if int(indices.min()) < 0 or int(indices.max()) >= n_rows:
        bad = (indices < 0) | (indices >= n_rows)
        i = int(bad.argmax())
        raise IndexError(f"index {int(indices[i])} at position {i} is out of range for {n_rows} rows")


def gather(src, row_bytes: int, indices, out, threads: int = 0) -> None:
    """Copy row indices[i] of src to out[i*row_bytes:(i+1)*row_bytes] (see featstore._core.gather)."""
    if row_bytes <= 0:
        raise ValueError(f"row_bytes must be positive, got {row_bytes}")
    if threads < 0:
        raise ValueError(f"threads must be >= 0, got {threads}")
    _check_index_array(indices)
    s = _byte_view(src, "src", False)
    o = _byte_view(out, "out", True)
    n = len(indices)
    need = _check_out(o, n, row_bytes)
    n_rows = s.size // row_bytes
    if n == 0:
        return
    _check_in_range(indices, n_rows)
    src2d = s[: n_rows * row_bytes].reshape(n_rows, row_bytes)
    out2d = o[:need].reshape(n, row_bytes)
    # mode="clip": indices are already checked, and mode="raise" would buffer `out`.
    np.take(src2d, indices, axis=0, out=out2d, mode="clip")


_MAX_PERMUTATION = 1 << 32  # csrc/permutation.h's kMaxPermutation


def permute_pcg64(out, state: int, inc: int, has_uint32: bool, uinteger: int) -> None:
    """out = numpy's Generator(PCG64 in that state).permutation(len(out)) (see featstore._core.permute_pcg64)."""
    _check_index_array(out, "out")
    if not out.flags.writeable:
        raise ValueError("out is read-only")
    if len(out) > _MAX_PERMUTATION:
        raise ValueError(f"out may hold at most 2**32 rows, got {len(out)}")
    bits = np.random.PCG64()
    bits.state = {
        "bit_generator": "PCG64",
        "state": {"state": int(state), "inc": int(inc)},
        "has_uint32": int(bool(has_uint32)),
        "uinteger": int(uinteger),
    }
    out[:] = np.random.Generator(bits).permutation(len(out))


def dequant_gather(
    src, scales, row_elems: int, group_elems: int, indices, out, scheme: str, out_dtype: str, threads: int = 0
) -> None:
    """Gather rows indices[i] of a quantised matrix and dequantise them (see featstore._core.dequant_gather)."""
    if row_elems <= 0:
        raise ValueError(f"row_elems must be positive, got {row_elems}")
    if group_elems <= 0 or row_elems % group_elems:
        raise ValueError(f"group_elems must divide row_elems, got {group_elems}")
    if threads < 0:
        raise ValueError(f"threads must be >= 0, got {threads}")
    check_codec(scheme, out_dtype)
    _check_index_array(indices)
    s = _byte_view(src, "src", False)
    sc = _byte_view(scales, "scales", False)
    o = _byte_view(out, "out", True)
    n = len(indices)
    need = n * row_elems * OUT_ITEM[out_dtype]
    if o.size < need:
        raise ValueError(f"out has {o.size} bytes but {n} rows of {row_elems} elements need more")
    n_rows = s.size // row_elems
    groups = row_elems // group_elems
    if sc.size // 4 // groups < n_rows:
        raise ValueError(
            f"scales has {sc.size} bytes but {n_rows} rows of {groups} float32 scales need {n_rows * groups * 4}"
        )
    if n == 0:
        return
    _check_in_range(indices, n_rows)
    codes = s[: n_rows * row_elems].reshape(n_rows, groups, group_elems)[indices]
    values = codes.view(np.int8).astype(np.float32) if scheme == "int8" else E4M3_VALUES[codes]
    row_scales = np.frombuffer(sc[: n_rows * groups * 4].tobytes(), dtype=np.float32).reshape(n_rows, groups, 1)
    x = (values * row_scales[indices]).reshape(-1)
    if out_dtype == "float32":
        result = x.view(np.uint8)
    elif out_dtype == "float16":
        result = x.astype(np.float16).view(np.uint8)
    else:
        result = to_bfloat16_bits(x).view(np.uint8)
    o[:need] = result


def io_engine() -> str:
    """How read_rows reads (see featstore._core.io_engine): here one preadv at a time."""
    return "one request at a time (the numpy fallback)"


def read_rows(
    fd: int,
    offset: int,
    row_bytes: int,
    n_rows: int,
    indices,
    out,
    queue_depth: int = 32,
    max_request_bytes: int = 1 << 20,
    path: str | bytes | os.PathLike = "",
    pos=None,
    bounce=None,
    scales=None,
    group_elems: int = 0,
    scheme: str = "int8",
    out_dtype: str = "float16",
) -> None:
    """Read row indices[i] of the file open as fd into out row i, or row pos[i] (see featstore._core.read_rows).

    Single-threaded here (``queue_depth`` is checked, not used): one ``os.preadv`` per run of rows
    adjacent in the file, each into its rows of ``out``, or (``bounce`` given) into the whole pages
    around the run at the start of ``bounce``, then copied out (with ``scales``: decoded, after all
    the rows are in).
    """
    if scales is not None:
        _read_decoded(fd, offset, row_bytes, n_rows, indices, out, queue_depth, max_request_bytes, path, pos, bounce,
                      scales, group_elems, scheme, out_dtype)  # fmt: skip
        return
    for name, v, low in (("row_bytes", row_bytes, 1), ("offset", offset, 0), ("n_rows", n_rows, 0)):
        if v < low:
            raise ValueError(f"{name} must be {'positive' if low else '>= 0'}, got {v}")
    if queue_depth < 1:
        raise ValueError(f"queue_depth must be >= 1, got {queue_depth}")
    if max_request_bytes < 1:
        raise ValueError(f"max_request_bytes must be positive, got {max_request_bytes}")
    _check_index_array(indices)
    o = _byte_view(out, "out", True)
    slot = None if bounce is None else _byte_view(bounce, "bounce", True)
    if slot is not None and slot.ctypes.data % _PAGE:
        raise ValueError(f"bounce must start on a {_PAGE}-byte boundary")
    n = len(indices)
    out_rows = o.size // row_bytes
    if pos is None:
        _check_out(o, n, row_bytes)
        where = np.arange(n)
    else:
        _check_index_array(pos, "pos")
        if len(pos) != n:
            raise ValueError(f"pos has {len(pos)} entries but indices has {n}")
        where = pos.copy()
        if n and (int(where.min()) < 0 or int(where.max()) >= out_rows):
            i = int(((where < 0) | (where >= out_rows)).argmax())
            raise IndexError(f"position {int(where[i])} at {i} is out of range for an out of {out_rows} rows")
    if n == 0:
        return
    _check_in_range(indices, n_rows)
    name = os.fsdecode(path)
    end = offset + n_rows * row_bytes
    size = os.fstat(fd).st_size
    if size < end:
        raise EOFError(
            f"{name} is {size} bytes, but its {n_rows} rows of {row_bytes} bytes end at byte {end} (truncated?)"
        )
    order = np.argsort(indices, kind="stable")
    rows = indices[order]
    first = np.ones(n, dtype=bool)
    first[1:] = rows[1:] != rows[:-1]
    uniq_rows, uniq_pos = rows[first], where[order[first]]
    # runs of adjacent rows, at most max_request_bytes (and 1024 iovecs) each
    max_rows = max(1, min(1024, max_request_bytes // row_bytes))
    breaks = np.flatnonzero(np.diff(uniq_rows) != 1) + 1
    starts = np.concatenate([[0], breaks])
    ends = np.concatenate([breaks, [len(uniq_rows)]])
    rows2d = o[: out_rows * row_bytes].reshape(out_rows, row_bytes)
    runs = [(s, min(b, s + max_rows)) for a, b in zip(starts.tolist(), ends.tolist()) for s in range(a, b, max_rows)]
    if slot is not None:
        spans = [_page_span(offset + int(uniq_rows[s]) * row_bytes, (e - s) * row_bytes) for s, e in runs]
        need = max((length for _, length, _ in spans), default=0)
        if len(slot) < need:
            raise ValueError(f"bounce has {len(slot)} bytes but a request needs {need}")
    for k, (s, e) in enumerate(runs):
        at = offset + int(uniq_rows[s]) * row_bytes
        if slot is None:
            _read_run(fd, at, [rows2d[p] for p in uniq_pos[s:e].tolist()], name)
            continue
        start, length, lead = spans[k]
        want = lead + (e - s) * row_bytes
        got = os.preadv(fd, [slot[:length].data], start)
        if got < want:
            raise EOFError(
                f"short read from {name}: got {got} of {want} bytes at offset {start}; "
                "the file ends before its rows (truncated?)"
            )
        rows2d[uniq_pos[s:e]] = slot[lead:want].reshape(e - s, row_bytes)
    repeat = ~first
    if repeat.any():
        # each repeat copies from the first position that asked for its row
        src_pos = where[order[np.flatnonzero(first)[np.cumsum(first) - 1]]]
        rows2d[where[order[repeat]]] = rows2d[src_pos[repeat]]


def _read_decoded(
    fd, offset, row_bytes, n_rows, indices, out, queue_depth, max_request_bytes, path, pos, bounce, scales, group, scheme,
    out_dtype,
) -> None:  # fmt: skip
    """read_rows with ``scales``: the codes read into a buffer of out's rows, then those rows decoded."""
    if row_bytes <= 0:
        raise ValueError(f"row_bytes must be positive, got {row_bytes}")
    if bounce is None:
        raise ValueError("decoding rows as they land needs bounce")
    if group <= 0:
        raise ValueError(f"group_elems must be positive, got {group}")
    if row_bytes % group:
        raise ValueError(f"group_elems must divide row_bytes {row_bytes}")
    item = check_codec(scheme, out_dtype)
    o = _byte_view(out, "out", True)
    out_row_bytes = row_bytes * item
    _check_index_array(indices)
    n = len(indices)
    n_out = o.size // out_row_bytes if pos is not None else n
    if pos is None and o.size < n * out_row_bytes:
        raise ValueError(f"out has {o.size} bytes but {n} rows of {out_row_bytes} bytes need {n * out_row_bytes} bytes")
    sc = _byte_view(scales, "scales", False)
    scale_row_bytes = row_bytes // group * 4
    if sc.size // scale_row_bytes < n_out:
        raise ValueError(f"scales has {sc.size} bytes but {n_out} out rows need {scale_row_bytes} each")
    if n == 0:
        return
    codes = np.zeros(n_out * row_bytes, dtype=np.uint8)
    read_rows(fd, offset, row_bytes, n_rows, indices, codes, queue_depth, max_request_bytes, path, pos, bounce)
    touched = np.unique(pos) if pos is not None else np.arange(n, dtype=np.int64)
    decoded = np.empty(len(touched) * out_row_bytes, dtype=np.uint8)
    dequant_gather(codes, sc, row_bytes, group, touched.astype(np.int64), decoded, scheme, out_dtype)
    o[: n_out * out_row_bytes].reshape(n_out, out_row_bytes)[touched] = decoded.reshape(-1, out_row_bytes)


def _page_span(begin: int, nbytes: int) -> tuple[int, int, int]:
    """(first byte, length, begin's offset in it) of the whole pages around file bytes [begin, begin + nbytes)."""
    start = begin // _PAGE * _PAGE
    return start, -(-(begin + nbytes) // _PAGE) * _PAGE - start, begin - start


def _read_run(fd: int, at: int, buffers: list, name: str) -> None:
    want = sum(len(b) for b in buffers)
    done = 0
    views = [memoryview(b) for b in buffers]
    while done < want:
        got = os.preadv(fd, views, at + done)
        if got == 0:
            raise EOFError(
                f"short read from {name}: got {done} of {want} bytes at offset {at + done}; "
                "the file ends before its rows (truncated?)"
            )
        done += got
        while got and views:
            if got >= len(views[0]):
                got -= len(views.pop(0))
            else:
                views[0] = views[0][got:]
                got = 0


def _default_num_threads() -> int:
    env = os.environ.get("FEATSTORE_NUM_THREADS", "")
    if env.isascii() and env.isdigit() and int(env) > 0:
        return min(int(env), 1024)
    try:
        n = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        n = os.cpu_count() or 1
    return max(1, min(8, n))


_num_threads = 0


def set_num_threads(n: int) -> None:
    """Kept for interface parity; the numpy backend is single-threaded."""
    global _num_threads
    if n < 1:
        raise ValueError(f"num_threads must be >= 1, got {n}")
    _num_threads = int(n)


def get_num_threads() -> int:
    global _num_threads
    if _num_threads == 0:
        _num_threads = _default_num_threads()
    return _num_threads
