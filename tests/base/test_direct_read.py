"""read_rows, the direct read path of featstore._core and of the numpy fallback: the same bytes as the
gather over the mapping, every index checked before any read, a short file a clear EOFError."""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from featstore import _backend as B
from featstore.store.direct import aligned_buffer

torch.set_num_threads(1)
SENTINEL = 0xA5


@pytest.fixture(scope="module")
def rowfile(tmp_path_factory):
    """A file of 37 header bytes, then 500 rows of 1 to 300 bytes' worth of random data."""
    path = tmp_path_factory.mktemp("direct") / "rows.bin"
    data = np.random.default_rng(7).integers(0, 256, 37 + 500 * 300 + 11, dtype=np.uint8)
    path.write_bytes(data.tobytes())
    fd = os.open(path, os.O_RDONLY)
    yield path, fd, data
    os.close(fd)


@st.composite
def read_cases(draw):
    row_bytes = draw(st.sampled_from([1, 3, 8, 100, 300]) | st.integers(1, 300))
    offset = draw(st.sampled_from([0, 37]))
    n_rows = draw(st.integers(1, (len_available(offset)) // row_bytes))
    n = draw(st.integers(0, 300))
    kind = draw(st.sampled_from(["random", "sorted", "runs", "reversed"]))
    if kind == "runs":  # contiguous runs (coalesced requests), some repeated
        starts = draw(st.lists(st.integers(0, n_rows - 1), min_size=1, max_size=8))
        idx = [min(n_rows - 1, s + k) for s in starts for k in range(draw(st.integers(1, 40)))][:n]
    else:
        idx = draw(st.lists(st.integers(0, n_rows - 1), min_size=n, max_size=n))
        if kind != "random":
            idx.sort(reverse=kind == "reversed")
    depth = draw(st.sampled_from([1, 2, 4, 32]))
    max_request = draw(st.sampled_from([1, row_bytes * 3, 1 << 20]))
    return row_bytes, offset, n_rows, np.array(idx, dtype=np.int64), depth, max_request


def len_available(offset: int) -> int:
    return 500 * 300 + 11 + 37 - offset


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(case=read_cases())
def test_read_rows_returns_the_bytes_the_mapped_gather_returns(backend, rowfile, case):
    path, fd, _ = rowfile
    row_bytes, offset, n_rows, idx, depth, max_request = case
    mapped = memoryview(B.MappedFile(str(path)))[offset : offset + n_rows * row_bytes]
    want = np.full(len(idx) * row_bytes + 3, SENTINEL, dtype=np.uint8)
    B.gather(mapped, row_bytes, idx, want)
    got = np.full(len(idx) * row_bytes + 3, SENTINEL, dtype=np.uint8)
    B.read_rows(fd, offset, row_bytes, n_rows, idx, got, depth, max_request, str(path))
    np.testing.assert_array_equal(got, want)


@pytest.mark.parametrize("depth", [1, 32])
def test_read_rows_into_a_torch_tensor_large_batch(backend, rowfile, depth):
    path, fd, data = rowfile
    rows = data[37 : 37 + 1000 * 150].reshape(1000, 150)
    idx = np.random.default_rng(1).integers(0, 1000, 5000).astype(np.int64)
    out = torch.empty(5000, 150, dtype=torch.uint8)
    B.read_rows(fd, 37, 150, 1000, idx, out, depth)
    np.testing.assert_array_equal(out.numpy(), rows[idx])


@pytest.mark.parametrize("bad", [-1, 500, 2**62])
def test_every_index_is_checked_before_any_read(backend, rowfile, bad):
    path, fd, _ = rowfile
    idx = np.zeros(3000, dtype=np.int64)
    idx[2222] = bad
    out = np.full(3000 * 10, SENTINEL, dtype=np.uint8)
    with pytest.raises(IndexError, match=rf"^index {bad} at position 2222 is out of range for 500 rows$"):
        B.read_rows(fd, 0, 10, 500, idx, out, 4)
    assert (out == SENTINEL).all()


def test_a_file_shorter_than_its_rows_is_an_eof_error_naming_it(backend, tmp_path):
    path = tmp_path / "short.bin"
    path.write_bytes(bytes(range(100)))
    fd = os.open(path, os.O_RDONLY)
    try:
        out = np.full(40, SENTINEL, dtype=np.uint8)
        with pytest.raises(EOFError, match=rf"^{path} is 100 bytes, but its 10 rows of 10 bytes end at byte 110"):
            B.read_rows(fd, 10, 10, 10, np.array([0, 9], dtype=np.int64), out, 2, 1 << 20, str(path))
        B.read_rows(fd, 10, 10, 9, np.array([8, 0], dtype=np.int64), out, 2, 1 << 20, str(path))
        assert out[:20].tolist() == list(range(90, 100)) + list(range(10, 20))
    finally:
        os.close(fd)


def test_argument_errors(backend, rowfile):
    path, fd, _ = rowfile
    idx = np.array([0], dtype=np.int64)
    out = np.zeros(8, np.uint8)
    with pytest.raises(ValueError, match="row_bytes must be positive"):
        B.read_rows(fd, 0, 0, 1, idx, out)
    with pytest.raises(ValueError, match="offset must be >= 0"):
        B.read_rows(fd, -1, 4, 1, idx, out)
    with pytest.raises(ValueError, match="queue_depth must be >= 1"):
        B.read_rows(fd, 0, 4, 1, idx, out, 0)
    with pytest.raises(ValueError, match=r"^out has 8 bytes but 1 indices x 9 row_bytes need 9 bytes$"):
        B.read_rows(fd, 0, 9, 1, idx, out)
    with pytest.raises(TypeError, match="indices must have dtype int64"):
        B.read_rows(fd, 0, 4, 1, idx.astype(np.int32), out)
    with pytest.raises(ValueError, match="out is read-only"):
        B.read_rows(fd, 0, 4, 1, idx, bytes(8))
    with pytest.raises(OSError) as ei:
        B.read_rows(987654, 0, 4, 1, idx, out, 1, 1 << 20, "nowhere.bin")
    assert ei.value.errno == 9  # EBADF


def test_empty_indices_read_nothing(backend, rowfile):
    _, fd, _ = rowfile
    out = np.full(4, SENTINEL, np.uint8)
    B.read_rows(fd, 0, 4, 10, np.zeros(0, np.int64), out)
    assert (out == SENTINEL).all()


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(case=read_cases(), spare=st.integers(0, 50), seed=st.integers(0, 2**32 - 1))
def test_read_rows_with_pos_puts_each_row_where_pos_says(backend, rowfile, case, spare, seed):
    """pos scatters the rows over out (distinct positions, some rows left untouched), as the block
    read-ahead uses it to fill several scattered slots with one read."""
    path, fd, _ = rowfile
    row_bytes, offset, n_rows, idx, depth, max_request = case
    out_rows = len(idx) + spare
    pos = np.random.default_rng(seed).permutation(out_rows)[: len(idx)].astype(np.int64)
    gathered = np.zeros(len(idx) * row_bytes, dtype=np.uint8)
    B.read_rows(fd, offset, row_bytes, n_rows, idx, gathered, 1, 1 << 20, str(path))
    want = np.full((out_rows, row_bytes), SENTINEL, dtype=np.uint8)
    want[pos] = gathered.reshape(-1, row_bytes)
    got = np.full(out_rows * row_bytes + 3, SENTINEL, dtype=np.uint8)
    B.read_rows(fd, offset, row_bytes, n_rows, idx, got, depth, max_request, str(path), pos)
    np.testing.assert_array_equal(got[: out_rows * row_bytes].reshape(out_rows, row_bytes), want)
    assert (got[out_rows * row_bytes :] == SENTINEL).all()


@pytest.mark.parametrize("bad", [-1, 40, 2**62])
def test_every_position_is_checked_before_any_read(backend, rowfile, bad):
    _, fd, _ = rowfile
    idx = np.zeros(30, dtype=np.int64)
    pos = np.arange(30, dtype=np.int64)
    pos[17] = bad
    out = np.full(40 * 10 + 9, SENTINEL, dtype=np.uint8)  # 40 whole rows (the 9 spare bytes are no row)
    with pytest.raises(IndexError, match=rf"^position {bad} at 17 is out of range for an out of 40 rows$"):
        B.read_rows(fd, 0, 10, 500, idx, out, 4, 1 << 20, "", pos)
    assert (out == SENTINEL).all()
    with pytest.raises(ValueError, match=r"^pos has 29 entries but indices has 30$"):
        B.read_rows(fd, 0, 10, 500, idx, out, 4, 1 << 20, "", pos[:29])
    with pytest.raises(TypeError, match="pos must have dtype int64"):
        B.read_rows(fd, 0, 10, 500, idx, out, 4, 1 << 20, "", pos.astype(np.int32))


BOUNCE_ROWS = 40


@pytest.fixture(scope="module")
def direct_rowfile(tmp_path_factory):
    """A file of random bytes opened with O_DIRECT (skipped where the filesystem refuses it). Its
    length is not a whole number of pages, so the last row ends in a partial page."""
    path = tmp_path_factory.mktemp("bounce") / "rows.bin"
    data = np.random.default_rng(11).integers(0, 256, 37 + BOUNCE_ROWS * 12_300 + 11, dtype=np.uint8)
    path.write_bytes(data.tobytes())
    try:
        dfd = os.open(path, os.O_RDONLY | os.O_DIRECT)
    except OSError as exc:
        pytest.skip(f"O_DIRECT is not supported on {path.parent}: {exc}")
    yield path, dfd
    os.close(dfd)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    row_bytes=st.sampled_from([4096, 5000, 9000, 12_288, 12_300]),
    offset=st.sampled_from([0, 37]),
    idx=st.lists(st.integers(0, BOUNCE_ROWS - 1), max_size=80)
    | st.integers(0, BOUNCE_ROWS - 1).map(lambda a: list(range(a, BOUNCE_ROWS)) + [a, a]),
    depth=st.sampled_from([1, 2, 32]),
    max_request=st.sampled_from([1, 30_000, 1 << 20]),
    slots=st.integers(1, 40),
    scatter=st.booleans(),
    engine=st.sampled_from(["auto", "threads"]),
)
def test_bounce_reads_return_the_mapped_bytes(
    backend, direct_rowfile, monkeypatch, row_bytes, offset, idx, depth, max_request, slots, scatter, engine
):
    """Through bounce slots (O_DIRECT, whole pages around each run, copied out as each lands): the same
    bytes as the mapped gather, for random, adjacent and repeated rows, with or without pos, however
    few slots the buffer holds, on both I/O engines."""
    path, dfd = direct_rowfile
    monkeypatch.setenv("FEATSTORE_IO", engine)
    n_rows = (os.stat(path).st_size - offset) // row_bytes
    idx = np.array([i % n_rows for i in idx], dtype=np.int64)
    mapped = memoryview(B.MappedFile(str(path)))[offset : offset + n_rows * row_bytes]
    want = np.full(len(idx) * row_bytes, SENTINEL, dtype=np.uint8)
    B.gather(mapped, row_bytes, idx, want)
    pos = np.random.default_rng(len(idx)).permutation(len(idx)).astype(np.int64) if scatter else None
    if scatter:
        want = want.reshape(-1, row_bytes)[np.argsort(pos)].reshape(-1)
    run_bytes = max(1, max_request // row_bytes) * row_bytes  # the longest run a request may read
    bounce = aligned_buffer(slots * (-(-run_bytes // 4096) + 1) * 4096)  # `slots` of its pages (+1 if unaligned)
    got = np.full(len(idx) * row_bytes, SENTINEL, dtype=np.uint8)
    B.read_rows(dfd, offset, row_bytes, n_rows, idx, got, depth, max_request, str(path), pos, bounce)
    np.testing.assert_array_equal(got, want)


def test_bounce_errors(backend, direct_rowfile, tmp_path):
    """A bounce buffer too small for one request, or not page-aligned, is a ValueError before any read;
    a file shorter than its rows is an EOFError naming it."""
    path, dfd = direct_rowfile
    idx = np.array([0, 1, 2], dtype=np.int64)
    out = np.empty(3 * 5000, dtype=np.uint8)
    with pytest.raises(ValueError, match="bounce has 4096 bytes but a request needs 8192"):
        B.read_rows(dfd, 37, 5000, 10, np.array([0], dtype=np.int64), out, 4, 1, str(path), None, aligned_buffer(4096))
    with pytest.raises(ValueError, match="bounce must start on a 4096-byte boundary"):
        B.read_rows(dfd, 37, 5000, 10, idx, out, 4, 1, str(path), None, aligned_buffer(3 * 4096)[1:])
    short = tmp_path / "short.bin"
    short.write_bytes(bytes(3 * 5000))
    sfd = os.open(short, os.O_RDONLY | os.O_DIRECT)
    try:
        with pytest.raises(EOFError, match=rf"{short} is 15000 bytes, but its 4 rows of 5000 bytes"):
            B.read_rows(sfd, 0, 5000, 4, idx, out, 4, 1 << 20, str(short), None, aligned_buffer(1 << 20))
    finally:
        os.close(sfd)


@settings(max_examples=50, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    row_bytes=st.sampled_from([4096, 9000, 12_288]),
    group=st.sampled_from([8, 1024]),
    idx=st.lists(st.integers(0, BOUNCE_ROWS - 1), max_size=60)
    | st.integers(0, BOUNCE_ROWS - 1).map(lambda a: list(range(a, BOUNCE_ROWS)) + [a, a]),
    scheme=st.sampled_from(["int8", "float8_e4m3"]),
    out_dtype=st.sampled_from(["float16", "bfloat16", "float32"]),
    slots=st.integers(1, 33),
    scatter=st.booleans(),
    engine=st.sampled_from(["auto", "threads"]),
)
def test_rows_decoded_as_they_land_are_what_dequant_gather_gives(
    backend, direct_rowfile, monkeypatch, row_bytes, group, idx, scheme, out_dtype, slots, scatter, engine
):
    """read_rows with scales decodes each row from its bounce slot: bit for bit the mapped dequant_gather,
    with the scales of each out row, for random, adjacent and repeated rows, with or without pos."""
    if row_bytes % group:
        group = 8
    path, dfd = direct_rowfile
    monkeypatch.setenv("FEATSTORE_IO", engine)
    n_rows = (os.stat(path).st_size - 37) // row_bytes
    idx = np.array([i % n_rows for i in idx], dtype=np.int64)
    n = len(idx)
    item = 4 if out_dtype == "float32" else 2
    rng = np.random.default_rng(n)
    row_scales = rng.uniform(0.001, 2, (n_rows, row_bytes // group)).astype(np.float32)  # scales of each stored row
    pos = rng.permutation(n).astype(np.int64) if scatter else np.arange(n, dtype=np.int64)
    out_scales = np.zeros((n, row_bytes // group), np.float32)
    out_scales[pos] = row_scales[idx]  # the scales of out row p: those of the row read into it
    mapped = memoryview(B.MappedFile(str(path)))[37 : 37 + n_rows * row_bytes]
    want = np.full((n, row_bytes * item), SENTINEL, dtype=np.uint8)
    B.dequant_gather(mapped, row_scales, row_bytes, group, idx, want, scheme, out_dtype)
    want[pos] = want.copy()
    got = np.full((n, row_bytes * item), SENTINEL, dtype=np.uint8)
    bounce = aligned_buffer(slots * 4 * 4096)  # slots of one row's pages
    B.read_rows(dfd, 37, row_bytes, n_rows, idx, got, 32, 1, str(path), pos if scatter else None, bounce,
                out_scales, group, scheme, out_dtype)  # fmt: skip
    np.testing.assert_array_equal(got, want)


def test_decode_errors(backend, direct_rowfile):
    """Decoding needs a bounce buffer, a group that divides the row, and a row of scales per out row."""
    path, dfd = direct_rowfile
    idx = np.array([0, 1, 2], dtype=np.int64)
    out = np.empty(3 * 4096 * 2, dtype=np.uint8)
    scales = np.ones(3 * 4096 // 8, np.float32)
    bounce = aligned_buffer(1 << 20)

    def read(**kw):
        args = dict(bounce=bounce, scales=scales, group_elems=8, scheme="int8", out_dtype="float16") | kw
        B.read_rows(dfd, 37, 4096, 10, idx, out, 4, 1, str(path), None, **args)

    with pytest.raises(ValueError, match="decoding rows as they land needs bounce"):
        read(bounce=None)
    with pytest.raises(ValueError, match="group_elems must divide row_bytes 4096"):
        read(group_elems=3)
    with pytest.raises(ValueError, match="group_elems must be positive"):
        read(group_elems=0)
    with pytest.raises(ValueError, match="scales has 6136 bytes but 3 out rows need 2048 each"):
        read(scales=scales[:-2])
    with pytest.raises(ValueError, match="out has 24576 bytes but 3 rows of 16384 bytes need 49152 bytes"):
        read(out_dtype="float32")
    with pytest.raises(ValueError, match="scheme must be 'int8' or 'float8_e4m3'"):
        read(scheme="int4")
    with pytest.raises(ValueError, match="row_bytes must be positive"):
        B.read_rows(dfd, 37, 0, 10, idx, out, 4, 1, str(path), None, bounce, scales, 8, "int8", "float16")
