"""featstore._core and featstore._numpy_backend: gather and MappedFile, same behaviour on both."""

from __future__ import annotations

import os
import select
import signal
import subprocess
import sys
import threading
import time

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from featstore import _backend as B

SENTINEL = 0xA5


def _expected(src: np.ndarray, row_bytes: int, idx: np.ndarray) -> np.ndarray:
    n_rows = src.size // row_bytes
    return src[: n_rows * row_bytes].reshape(n_rows, row_bytes)[idx].reshape(-1)


@st.composite
def gather_cases(draw):
    row_bytes = draw(st.sampled_from([1, 2, 3, 7, 8, 16, 60, 64, 100, 1536]) | st.integers(1, 300))
    n_rows = draw(st.integers(1, 300))
    extra = draw(st.integers(0, row_bytes - 1))  # trailing bytes that don't form a row
    n = draw(st.integers(0, 400))
    idx = draw(st.lists(st.integers(0, n_rows - 1), min_size=n, max_size=n))
    order = draw(st.sampled_from(["as drawn", "sorted", "reversed"]))
    if order == "sorted":
        idx.sort()
    elif order == "reversed":
        idx.sort(reverse=True)
    threads = draw(st.sampled_from([0, 1, 2, 4]))
    return row_bytes, n_rows, extra, np.array(idx, dtype=np.int64), threads


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(case=gather_cases())
def test_gather_matches_fancy_indexing(backend, case):
    row_bytes, n_rows, extra, idx, threads = case
    src = np.random.default_rng(len(idx)).integers(0, 256, n_rows * row_bytes + extra, dtype=np.uint8)
    out = np.full(len(idx) * row_bytes + 5, SENTINEL, dtype=np.uint8)
    B.gather(src, row_bytes, idx, out, threads)
    np.testing.assert_array_equal(out[: len(idx) * row_bytes], _expected(src, row_bytes, idx))
    assert (out[len(idx) * row_bytes :] == SENTINEL).all()


@pytest.mark.parametrize("threads", [0, 1, 2, 4])
@pytest.mark.parametrize(
    "row_bytes,n_rows,n",
    [
        (1536, 4096, 3000),
        (64, 100_000, 50_000),
        (70_000, 64, 100),
        (8, 300_000, 20_000),
        (2, 5000, 9001),
        (4, 40_000, 9000),
        (1, 7000, 12_345),
    ],
)
@pytest.mark.parametrize("order", ["random", "sorted", "dense"])
def test_gather_large(backend, threads, row_bytes, n_rows, n, order):
    """Sizes above the inline threshold: pool + sorted-keys path (first two), pool + in-order path (huge rows),
    the small-row path (labels: prefetched far ahead, split by rows; 8, 2, 4 and 1 bytes) over several threads
    (last four)."""
    rng = np.random.default_rng(0)
    src = rng.integers(0, 256, n_rows * row_bytes, dtype=np.uint8)
    if order == "dense":
        idx = rng.permutation(np.repeat(np.arange(n_rows), 2))[:n].astype(np.int64)
    else:
        idx = rng.integers(0, n_rows, n).astype(np.int64)
        if order == "sorted":
            idx.sort()
    out = np.empty(n * row_bytes, dtype=np.uint8)
    B.gather(src, row_bytes, idx, out, threads)
    np.testing.assert_array_equal(out, _expected(src, row_bytes, idx))


def test_gather_from_cold_file(backend, tmp_path):
    """Page cache dropped: the core visits dense unsorted batches in sorted order (same result)."""
    row_bytes, n_rows = 1000, 3000
    data = np.random.default_rng(2).integers(0, 256, n_rows * row_bytes, dtype=np.uint8)
    p = tmp_path / "cold.bin"
    p.write_bytes(data.tobytes())
    idx = np.random.default_rng(3).integers(0, n_rows, 2000).astype(np.int64)
    for threads in (1, 0):
        with open(p, "rb") as f:
            os.fsync(f.fileno())
            os.posix_fadvise(f.fileno(), 0, 0, os.POSIX_FADV_DONTNEED)
        mf = B.MappedFile(str(p))
        out = np.empty(len(idx) * row_bytes, np.uint8)
        B.gather(mf, row_bytes, idx, out, threads)
        np.testing.assert_array_equal(out, _expected(data, row_bytes, idx))
        del mf  # unmapped, so the next fadvise can drop the pages again


def test_gather_accepts_typed_buffers(backend):
    src = np.arange(12 * 5, dtype=np.float32).reshape(12, 5)  # rows of 20 bytes
    out = np.zeros((3, 5), dtype=np.float32)
    B.gather(memoryview(src), 20, np.array([11, 0, 11]), out)
    np.testing.assert_array_equal(out, src[[11, 0, 11]])
    B.gather(src.tobytes(), 20, np.array([1, 2, 3]), out)  # read-only bytes as src
    np.testing.assert_array_equal(out, src[[1, 2, 3]])


@pytest.mark.parametrize("bad", [-1, 10, 11, 2**62, -(2**63)])
@pytest.mark.parametrize("threads", [0, 1])
def test_out_of_range_raises_and_leaves_out_untouched(backend, bad, threads):
    src = np.arange(10 * 4, dtype=np.uint8)  # 10 rows of 4 bytes
    idx = np.zeros(50_000, dtype=np.int64)
    idx[37_123] = bad
    out = np.full(len(idx) * 4, SENTINEL, dtype=np.uint8)
    with pytest.raises(IndexError) as ei:
        B.gather(src, 4, idx, out, threads)
    assert str(ei.value) == f"index {bad} at position 37123 is out of range for 10 rows"
    assert (out == SENTINEL).all()


def test_first_bad_index_is_reported(backend):
    out = np.zeros(16, dtype=np.uint8)
    with pytest.raises(IndexError, match=r"^index 7 at position 1 is out of range for 2 rows$"):
        B.gather(np.zeros(8, np.uint8), 4, np.array([0, 7, -1, 9]), out)
    with pytest.raises(IndexError, match=r"^index 0 at position 0 is out of range for 0 rows$"):
        B.gather(b"", 4, np.array([0]), out)


def test_empty_indices(backend):
    out = np.full(4, SENTINEL, np.uint8)
    B.gather(b"", 4, np.zeros(0, np.int64), out)
    B.gather(np.zeros(8, np.uint8), 4, np.zeros(0, np.int64), np.zeros(0, np.uint8))
    assert (out == SENTINEL).all()


@pytest.mark.parametrize(
    "indices",
    [
        np.array([0, 1], dtype=np.int32),
        np.array([0, 1], dtype=np.uint64),
        np.array([0.0, 1.0]),
        np.array([0, 1], dtype=">i8"),
        [0, 1],
        (0,),
    ],
)
def test_wrong_index_type_raises_type_error(backend, indices):
    with pytest.raises(TypeError, match="indices must"):
        B.gather(np.zeros(8, np.uint8), 4, indices, np.zeros(8, np.uint8))


@pytest.mark.parametrize("indices", [np.zeros((1, 2), np.int64), np.zeros(4, np.int64)[::2], np.array(0, np.int64)])
def test_wrong_index_shape_raises_value_error(backend, indices):
    with pytest.raises(ValueError, match="indices must"):
        B.gather(np.zeros(8, np.uint8), 4, indices, np.zeros(8, np.uint8))


def test_out_too_small(backend):
    with pytest.raises(ValueError, match=r"^out has 7 bytes but 2 indices x 4 row_bytes need 8 bytes$"):
        B.gather(np.zeros(8, np.uint8), 4, np.array([0, 1]), np.zeros(7, np.uint8))


@pytest.mark.parametrize("row_bytes", [0, -4])
def test_bad_row_bytes(backend, row_bytes):
    with pytest.raises(ValueError, match="row_bytes must be positive"):
        B.gather(np.zeros(8, np.uint8), row_bytes, np.array([0]), np.zeros(8, np.uint8))


def test_bad_threads(backend):
    with pytest.raises(ValueError, match="threads must be >= 0"):
        B.gather(np.zeros(8, np.uint8), 4, np.array([0]), np.zeros(8, np.uint8), -1)


def test_readonly_or_strided_out_is_rejected(backend):
    ro = np.zeros(8, np.uint8)
    ro.flags.writeable = False
    with pytest.raises(ValueError, match="out is read-only"):
        B.gather(np.zeros(8, np.uint8), 4, np.array([0]), ro)
    with pytest.raises(ValueError, match="out is read-only"):
        B.gather(np.zeros(8, np.uint8), 4, np.array([0]), bytes(8))
    with pytest.raises(ValueError, match="out must be C-contiguous"):
        B.gather(np.zeros(8, np.uint8), 4, np.array([0]), np.zeros(16, np.uint8)[::2])
    with pytest.raises(ValueError, match="src must be C-contiguous"):
        B.gather(np.zeros(16, np.uint8)[::2], 4, np.array([0]), np.zeros(8, np.uint8))
    with pytest.raises(TypeError, match="out must support the buffer protocol"):
        B.gather(np.zeros(8, np.uint8), 4, np.array([0]), object())


def test_gather_into_torch_tensor(backend):
    src = np.random.default_rng(0).standard_normal((50, 8)).astype(np.float16)
    idx = np.array([3, 49, 0, 3])
    out = torch.empty(4, 8, dtype=torch.float16)
    B.gather(src, 16, idx, out)  # via __dlpack__
    torch.testing.assert_close(out, torch.from_numpy(src[idx]))
    out2 = torch.zeros(4, 8, dtype=torch.float16)
    B.gather(src, 16, idx, out2.numpy())
    torch.testing.assert_close(out2, out)


# ---- MappedFile ------------------------------------------------------------------------------


@pytest.fixture
def datafile(tmp_path):
    data = np.random.default_rng(1).integers(0, 256, 3 * 4096 + 123, dtype=np.uint8).tobytes()
    p = tmp_path / "data.bin"
    p.write_bytes(data)
    return p, data


def test_mapped_file_content_and_attributes(backend, datafile):
    p, data = datafile
    mf = B.MappedFile(str(p))
    assert mf.path == str(p)
    assert mf.size == len(data)
    mv = memoryview(mf)
    assert (mv.ndim, mv.format, mv.itemsize, mv.nbytes, mv.readonly) == (1, "B", 1, len(data), False)
    assert mv.tobytes() == data
    assert np.frombuffer(mf, dtype=np.uint8).tobytes() == data


def test_mapped_file_is_copy_on_write(backend, datafile):
    p, data = datafile
    mf = B.MappedFile(str(p))
    view = np.frombuffer(mf, dtype=np.uint8)
    view[:10] = 7
    view[-1] = 9
    assert (view[:10] == 7).all() and view[-1] == 9
    assert memoryview(mf)[0] == 7  # every view shares the private pages
    assert p.read_bytes() == data  # ... and the file never changes
    assert B.MappedFile(str(p)).size == len(data)
    assert bytes(memoryview(B.MappedFile(str(p)))[:10]) == data[:10]


def test_views_keep_the_mapping_alive(backend, datafile):
    p, data = datafile
    view = np.frombuffer(B.MappedFile(str(p)), dtype=np.uint8)
    t = torch.frombuffer(B.MappedFile(str(p)), dtype=torch.uint8)
    import gc

    gc.collect()
    assert view.tobytes() == data
    assert bytes(t.numpy()) == data
    t[0] = 1  # writable, private


def test_gather_from_mapped_file_into_torch(backend, datafile):
    p, data = datafile
    mf = B.MappedFile(str(p))
    row_bytes = 512
    idx = np.array([0, 23, 5, 5, 1])
    out = torch.empty(len(idx), row_bytes, dtype=torch.uint8)
    B.gather(mf, row_bytes, idx, out.numpy())
    np.testing.assert_array_equal(out.numpy().reshape(-1), _expected(np.frombuffer(data, np.uint8), row_bytes, idx))


@pytest.mark.parametrize("advice", ["normal", "random", "sequential", "willneed", "dontneed"])
def test_advise_accepts_all_names(backend, datafile, advice):
    p, data = datafile
    mf = B.MappedFile(str(p))
    mf.advise(0, mf.size, advice)
    mf.advise(100, 5000, advice)  # unaligned offset: rounded down to the page
    mf.advise(mf.size, 0, advice)
    assert memoryview(mf).tobytes() == data


def test_advise_dontneed_drops_private_pages(backend, datafile):
    p, data = datafile
    mf = B.MappedFile(str(p))
    view = np.frombuffer(mf, dtype=np.uint8)
    view[0] = data[0] ^ 0xFF
    mf.advise(0, 4096, "dontneed")
    assert view[0] == data[0]


def test_advise_rejects_bad_arguments(backend, datafile):
    p, _ = datafile
    mf = B.MappedFile(str(p))
    with pytest.raises(ValueError, match="unknown advice"):
        mf.advise(0, 10, "hugepage")
    for off, length in [(-1, 10), (0, mf.size + 1), (mf.size, 1), (10, -1), (mf.size + 4096, 0)]:
        with pytest.raises(ValueError, match="outside the file"):
            mf.advise(off, length, "normal")


def test_path_like_and_bytes_paths(backend, datafile):
    p, data = datafile
    for path in (p, os.fsencode(p)):
        mf = B.MappedFile(path)
        assert mf.path == str(p) and mf.size == len(data)
    assert str(p) in repr(mf)


def test_missing_file_raises_file_not_found(backend, tmp_path):
    p = tmp_path / "nope.bin"
    with pytest.raises(FileNotFoundError) as ei:
        B.MappedFile(str(p))
    assert ei.value.filename == str(p)
    with pytest.raises(IsADirectoryError):
        B.MappedFile(str(tmp_path))


def test_empty_file(backend, tmp_path):
    p = tmp_path / "empty.bin"
    p.write_bytes(b"")
    mf = B.MappedFile(str(p))
    assert mf.size == 0 and mf.path == str(p)
    assert memoryview(mf).nbytes == 0
    assert np.frombuffer(mf, dtype=np.uint8).size == 0
    mf.advise(0, 0, "willneed")
    with pytest.raises(ValueError):
        mf.advise(0, 1, "willneed")
    B.gather(mf, 8, np.zeros(0, np.int64), np.zeros(0, np.uint8))
    with pytest.raises(IndexError):
        B.gather(mf, 8, np.zeros(1, np.int64), np.zeros(8, np.uint8))


# ---- threads ---------------------------------------------------------------------------------


def test_num_threads(backend):
    n = B.get_num_threads()
    assert n >= 1
    try:
        B.set_num_threads(3)
        assert B.get_num_threads() == 3
        for bad in (0, -1):
            with pytest.raises(ValueError):
                B.set_num_threads(bad)
    finally:
        B.set_num_threads(n)


def _big_case(seed=0):
    rng = np.random.default_rng(seed)
    src = rng.integers(0, 256, 8192 * 256, dtype=np.uint8)
    idx = rng.integers(0, 8192, 4096).astype(np.int64)
    return src, idx, _expected(src, 256, idx)  # 1 MiB out: above the inline threshold


def test_gather_in_forked_child(backend):
    src, idx, want = _big_case()
    out = np.empty_like(want)
    B.gather(src, 256, idx, out, 0)  # the parent's pool exists and has run
    np.testing.assert_array_equal(out, want)
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # child: no pytest machinery, always _exit
        ok = False
        try:
            os.close(r)
            for threads in (0, 2, 0):
                o = np.zeros_like(want)
                B.gather(src, 256, idx, o, threads)
                if not np.array_equal(o, want):
                    break
            else:
                ok = True
        finally:
            os.write(w, b"ok" if ok else b"bad")
            os._exit(0)
    os.close(w)
    try:
        ready, _, _ = select.select([r], [], [], 20)
        if not ready:
            os.kill(pid, signal.SIGKILL)
            pytest.fail("gather in a forked child hung")
        assert os.read(r, 8) == b"ok"
    finally:
        os.close(r)
        os.waitpid(pid, 0)


def test_gather_from_many_python_threads(backend):
    src, idx, want = _big_case()
    errors = []

    def work(seed):
        try:
            rng = np.random.default_rng(seed)
            for _ in range(20):
                i = rng.integers(0, 8192, 4096).astype(np.int64)
                o = np.empty(4096 * 256, np.uint8)
                B.gather(src, 256, i, o, int(rng.integers(0, 3)))
                np.testing.assert_array_equal(o, _expected(src, 256, i))
        except BaseException as e:
            errors.append(e)

    threads = [threading.Thread(target=work, args=(s,)) for s in range(6)]
    t0 = time.monotonic()
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert time.monotonic() - t0 < 30, "threads hung"
    assert not errors, errors[0]


def test_set_num_threads_while_gathering(backend):
    src, idx, want = _big_case()
    stop = threading.Event()
    n0 = B.get_num_threads()

    def resize():
        k = 1
        while not stop.wait(0.0002):
            B.set_num_threads(k % 4 + 1)
            k += 1

    t = threading.Thread(target=resize)
    t.start()
    try:
        for _ in range(30):
            o = np.empty_like(want)
            B.gather(src, 256, idx, o)
            np.testing.assert_array_equal(o, want)
    finally:
        stop.set()
        t.join()
        B.set_num_threads(n0)


# ---- backend selection -----------------------------------------------------------------------


def test_backend_switching(backend):
    assert B.name() == backend
    assert set(B.available()) >= {"numpy"}
    mod = __import__(f"featstore.{'_core' if backend == 'core' else '_numpy_backend'}", fromlist=["x"])
    assert B.gather is mod.gather and B.MappedFile is mod.MappedFile
    other = "numpy" if backend == "core" else backend
    with B.use(other):
        assert B.name() == other
    assert B.name() == backend
    with pytest.raises(ValueError), B.use("fortran"):
        pass


_SELECTION_SCRIPT = r"""
import os, sys, warnings
mode = sys.argv[1]
if mode == "broken":
    sys.modules["featstore._core"] = None  # makes `import featstore._core` raise ImportError
with warnings.catch_warnings(record=True) as w:
    warnings.simplefilter("always")
    from featstore import _backend
msgs = [str(x.message) for x in w if "compiled core" in str(x.message)]
print(_backend.name(), _backend.get_num_threads(), len(msgs), "pip install -e ." in "".join(msgs))
"""


@pytest.mark.parametrize(
    "mode,env,expected",
    [
        ("ok", {"FEATSTORE_PUREPYTHON": "1", "FEATSTORE_NUM_THREADS": "3"}, "numpy 3 0 False"),
        ("ok", {"FEATSTORE_NUM_THREADS": "5"}, "core 5 0 False"),
        ("broken", {"FEATSTORE_NUM_THREADS": "2"}, "numpy 2 1 True"),
    ],
)
def test_backend_selection_at_import(mode, env, expected):
    if mode == "ok" and env.get("FEATSTORE_PUREPYTHON") != "1" and "core" not in B.available():
        pytest.skip("compiled core not available")
    e = {k: v for k, v in os.environ.items() if not k.startswith("FEATSTORE_")}
    r = subprocess.run(
        [sys.executable, "-c", _SELECTION_SCRIPT, mode], env={**e, **env}, capture_output=True, text=True, timeout=60
    )
    assert r.returncode == 0, r.stderr
    assert r.stdout.split("\n")[-2] == expected
