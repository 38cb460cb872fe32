"""fs.gather(read=...): the direct path and the mapping give the same rows; a truncated file is a
CorruptFileError naming it; what read="auto" picks (featstore.store.memory, pure and on this machine)."""

from __future__ import annotations

import os
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from _util import make_store
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from featstore import CorruptFileError, FeatureStore
from featstore.store import memory

torch.set_num_threads(1)
N = 301


@pytest.fixture(scope="module")
def stored(tmp_path_factory):
    root = tmp_path_factory.mktemp("store")
    store, data, _ = make_store(root, n_rows=N, row_shape=(3, 7), dtype=torch.float16)
    return store["enc/layer_1"], data


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    index=st.lists(st.integers(-N, N - 1), max_size=200)
    | st.integers(0, N - 1).flatmap(lambda a: st.integers(a, N).map(lambda b: list(range(a, b))))
)
def test_direct_and_mmap_gather_the_same_rows(stored, backend, index):
    fs, data = stored
    direct = fs.gather(index, read="direct")
    mapped = fs.gather(index, read="mmap")
    assert direct.dtype == mapped.dtype == torch.float16
    assert direct.shape == mapped.shape == (len(index), 3, 7)
    assert torch.equal(direct.view(torch.int16), mapped.view(torch.int16))
    assert torch.equal(direct, data[index] if index else data[:0])


def test_direct_gather_into_a_preallocated_buffer(stored, backend):
    fs, data = stored
    out = torch.empty(4, 3, 7, dtype=torch.float16)
    assert fs.gather([5, 300, 5, 0], out=out, read="direct") is out
    assert torch.equal(out, data[[5, 300, 5, 0]])


def test_read_argument_is_checked(stored):
    fs, _ = stored
    with pytest.raises(ValueError, match=r"read must be one of 'auto', 'mmap', 'direct', got 'disk'"):
        fs.gather([0], read="disk")
    assert fs.read_path("auto") in ("mmap", "direct") and fs.read_path("direct") == "direct"


@pytest.mark.damages_store
def test_a_truncated_file_is_a_corrupt_file_error_naming_it(tmp_path, backend):
    store, _, _ = make_store(tmp_path, n_rows=100, row_shape=(512,), dtype=torch.float32)
    fs = store["enc/layer_1"]
    assert fs.gather([1, 99], read="direct").shape == (2, 512)
    os.truncate(fs.path, fs.header.data_start + 50 * fs.row_bytes)  # someone else cuts the file
    with pytest.raises(CorruptFileError, match=rf"feature set 'enc/layer_1': {fs.path} is .* \(truncated\?\)"):
        fs.gather([1, 99], read="direct")
    with pytest.raises(CorruptFileError):
        fs.gather([1], read="direct")  # the file is short, even if row 1 is still there


@pytest.mark.damages_store
@pytest.mark.parametrize("o_direct", [True, False])
@pytest.mark.parametrize("row_shape", [(257, 128), (171, 192)])  # 65,792 B (pieces of 256 B); 65,664 B (128 B)
def test_large_rows_read_with_o_direct_are_the_mapped_rows(tmp_path, backend, monkeypatch, o_direct, row_shape):
    """Rows of at least PAGE_READ_MIN_ROW_BYTES are read with O_DIRECT, whole pages around each, and
    copied out of the pages; without O_DIRECT they go through the cache. Both give the mapped bytes."""
    from featstore.store import direct
    from featstore.store.direct import DirectReader

    if not o_direct:
        monkeypatch.setattr(DirectReader, "direct_fd", lambda self: None)
    monkeypatch.setattr(direct, "PAGE_READ_ARENA_BYTES", 150_000)  # two rows a chunk: the batch in three
    store, data, _ = make_store(tmp_path, n_rows=9, row_shape=row_shape, dtype=torch.float16)
    fs = store["enc/layer_1"]
    assert fs.direct.page_reads and (fs.direct.direct_fd() is not None) == o_direct
    rows = [8, 0, 3, 3, 7, 1]
    assert torch.equal(fs.gather(rows, read="direct").view(torch.int16), data[rows].view(torch.int16))
    os.truncate(fs.path, fs.header.data_start + 5 * fs.row_bytes + 100)  # someone else cuts the file
    with pytest.raises(CorruptFileError, match="enc/layer_1"):
        fs.gather([8, 0], read="direct")


@pytest.mark.parametrize("engine", ["io_uring", "threads"])
def test_both_io_engines_read_the_mapped_rows(stored, monkeypatch, engine):
    """$FEATSTORE_IO picks io_uring (where the kernel allows a ring) or the thread pool; both read the
    same bytes: random, repeated and adjacent rows, several requests in flight."""
    from featstore import _backend

    fs, data = stored
    monkeypatch.setenv("FEATSTORE_IO", engine)
    if engine == "io_uring" and not _backend.io_engine().startswith("io_uring"):
        pytest.skip(f"no io_uring here: {_backend.io_engine()}")
    assert _backend.io_engine().startswith(engine)
    rows = np.concatenate([np.random.default_rng(3).integers(0, N, 400), np.arange(100, 180), [5, 5, 5]])
    assert torch.equal(fs.gather(rows, read="direct").view(torch.int16), data[rows].view(torch.int16))
    loader = fs.batches(64, read="direct", labels=False)
    assert loader.info["io_engine"].startswith(engine)


def test_a_forked_child_reads_with_a_ring_of_its_own(stored):
    """A child forked after the parent read directly (a DataLoader worker) must not submit into the
    parent's io_uring: both read the right rows after the fork."""
    fs, data = stored
    rows = np.random.default_rng(4).integers(0, N, 300)
    assert torch.equal(fs.gather(rows, read="direct"), data[rows])  # the parent's ring exists now
    pid = os.fork()
    if pid == 0:  # the child: exit 0 only if its reads are right
        ok = all(torch.equal(fs.gather(rows[k:], read="direct"), data[rows[k:]]) for k in range(0, 300, 30))
        os._exit(0 if ok else 1)
    assert torch.equal(fs.gather(rows[::-1].copy(), read="direct"), data[rows[::-1].copy()])
    for _ in range(600):  # at most 60 s: a child that hangs is killed and fails the test
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            break
        time.sleep(0.1)
    else:
        os.kill(pid, 9)
        os.waitpid(pid, 0)
        pytest.fail("the forked child hung reading")
    assert status == 0


def test_a_bad_io_engine_is_one_clear_error(stored, monkeypatch):
    fs, _ = stored
    monkeypatch.setenv("FEATSTORE_IO", "aio")
    with pytest.raises(ValueError, match=r"\$FEATSTORE_IO must be auto, io_uring or threads, got 'aio'"):
        fs.gather([0, 5, 9], read="direct")


# ---- featstore.store.memory --------------------------------------------------------------------

V1_CGROUP = "12:pids:/\n4:memory:/slurm/uid_1/job_7\n0::/\n"
V1_MOUNTS = (
    "35 31 0:32 / /sys/fs/cgroup/memory rw,relatime - cgroup cgroup rw,memory\n"
    "41 31 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw\n"
)
V2_CGROUP = "0::/user.slice/job.scope\n"
V2_MOUNTS = "30 23 0:26 / /sys/fs/cgroup rw,nosuid - cgroup2 cgroup2 rw,nsdelegate\n"


def _files(values: dict[str, str]):
    return lambda path: values.get(str(path))


def test_v1_limit_is_the_tightest_along_the_path():
    files = _files(
        {
            "/sys/fs/cgroup/memory/slurm/uid_1/job_7/memory.limit_in_bytes": "9223372036854771712\n",  # no limit
            "/sys/fs/cgroup/memory/slurm/uid_1/memory.limit_in_bytes": "4294967296\n",
            "/sys/fs/cgroup/memory/slurm/memory.limit_in_bytes": "8589934592\n",
        }
    )
    limit, source = memory.cgroup_limit(V1_CGROUP, V1_MOUNTS, files)
    assert limit == 4 * 2**30 and source == "/sys/fs/cgroup/memory/slurm/uid_1/memory.limit_in_bytes"


def test_v2_limit_and_max():
    files = _files(
        {
            "/sys/fs/cgroup/user.slice/job.scope/memory.max": "536870912\n",
            "/sys/fs/cgroup/user.slice/memory.max": "max\n",
        }
    )
    assert memory.cgroup_limit(V2_CGROUP, V2_MOUNTS, files) == (
        512 * 2**20,
        "/sys/fs/cgroup/user.slice/job.scope/memory.max",
    )
    assert memory.cgroup_limit(V2_CGROUP, V2_MOUNTS, _files({})) == (None, "")
    # a v1 memory line, but no v1 memory mount: nothing to read
    assert memory.cgroup_limit(V1_CGROUP, V2_MOUNTS, files) == (None, "")


def test_a_namespaced_mount_root_is_stripped():
    mounts = "35 31 0:32 /slurm /sys/fs/cgroup/memory rw - cgroup cgroup rw,memory\n"
    files = _files({"/sys/fs/cgroup/memory/uid_1/job_7/memory.limit_in_bytes": "1073741824"})
    assert memory.cgroup_limit(V1_CGROUP, mounts, files)[0] == 2**30


def test_usable_bytes_and_the_auto_choice():
    gib = 2**30
    assert memory.usable_bytes(None, None, 5) is None
    assert memory.usable_bytes(4 * gib, 10 * gib, gib) == 3 * gib  # the cgroup binds, less the private memory held
    assert memory.usable_bytes(None, 2 * gib, gib) == 2 * gib  # MemAvailable already leaves out what we hold
    assert memory.usable_bytes(gib, 10 * gib, 2 * gib) == 0
    facts = memory.MemoryFacts(4 * gib, "/cg/memory.max", 10 * gib, gib)
    fits = memory.choose_read("auto", 3 * gib, facts)
    assert fits.path == "mmap" and "fit in 3072.0 MiB" in fits.why and "/cg/memory.max" in fits.why
    big = memory.choose_read("auto", 3 * gib + 1, facts)
    assert big.path == "direct" and "exceed" in big.why
    assert memory.choose_read("mmap", 100 * gib, facts) == ("mmap", "read='mmap' requested", False)
    assert memory.choose_read("auto", 100 * gib, memory.MemoryFacts(None, "", None, 0)).path == "mmap"
    with pytest.raises(ValueError, match="read must be one of"):
        memory.choose_read("fast", 1, facts)


def test_meminfo_fields():
    text = "MemTotal:       24683652 kB\nMemAvailable:   23103228 kB\nHugePages_Total:       0\n"
    assert memory.meminfo_field(text, "MemAvailable") == 23103228 * 1024
    assert memory.meminfo_field(text, "HugePages_Total") == 0
    assert memory.meminfo_field(text, "Nope") is None


def test_facts_on_this_machine():
    facts = memory.memory_facts()
    assert facts.available is not None and facts.available > 0
    assert facts.resident > 0
    assert facts.usable is not None and facts.usable <= facts.available
    assert memory.physical_ram() is not None


CGROUP_V1 = Path("/sys/fs/cgroup/memory")


@pytest.mark.skipif(
    os.geteuid() != 0 or not (CGROUP_V1 / "cgroup.procs").exists(), reason="needs root and cgroup v1 memory"
)
def test_inside_a_memory_cgroup_auto_reads_direct_unless_the_set_is_cached(tmp_path):
    """A child process in a 256 MiB cgroup sees the limit. For a 300 MiB set out of the page cache auto
    picks direct; for the same set cached by this process (charged outside the cgroup) it picks mmap.
    Either way every row arrives without an OOM kill. (The child joins after importing torch: v1
    leaves the memory it holds charged where it was, but counts it as private memory, ~150 MiB.)"""
    import subprocess
    import sys

    if _filesystem_of(tmp_path) == "tmpfs":
        pytest.skip(f"{tmp_path} is on tmpfs: its pages cannot be dropped from memory")
    store = FeatureStore.create(tmp_path / "s")
    with store.create_feature_set("big/x", 76_800, (1024,), "float32") as w:  # 300 MiB
        for at in range(0, 76_800, 12_800):
            w.write(at, np.ones((12_800, 1024), np.float32))
    fs = FeatureStore.open(tmp_path / "s")["big/x"]
    own = Path(Path("/proc/self/cgroup").read_text().split("memory:", 1)[1].split("\n", 1)[0].lstrip("/"))
    group = CGROUP_V1 / own / f"featstore-test-{os.getpid()}"
    group.mkdir()
    script = (
        "import os, sys, featstore; open(sys.argv[2] + '/cgroup.procs', 'w').write(str(os.getpid()));"
        "fs = featstore.FeatureStore.open(sys.argv[1])['big/x'];"
        "from featstore.store import memory; f = memory.memory_facts();"
        "x = fs.batches(512, shuffle=False); print(f.cgroup_limit, x.info['read'], x.info['read_why']);"
        "print(sum(float(b.features.sum()) for b in x))"
    )
    try:
        (group / "memory.limit_in_bytes").write_text(str(256 * 2**20))
        for cached, expected in ((False, "direct"), (True, "mmap")):
            _drop_cache(fs.path)
            if cached:
                with open(fs.path, "rb") as f:
                    while f.read(1 << 24):
                        pass
            out = subprocess.run(
                [sys.executable, "-c", script, str(tmp_path / "s"), str(group)],
                capture_output=True,
                text=True,
                timeout=120,
            )
            assert out.returncode == 0, out.stderr
            limit, path = out.stdout.split("\n")[0].split()[:2]
            assert int(limit) == 256 * 2**20 and path == expected, (cached, out.stdout, out.stderr)
            assert float(out.stdout.split("\n")[1]) == 76_800 * 1024
    finally:
        group.rmdir()


@pytest.mark.parametrize("page", [4096, 65536])  # 64 KiB pages: some arm64 and ppc64le kernels
def test_sampled_residency_counts_every_page_of_a_small_range_and_samples_a_big_one(page):
    import inspect
    import mmap

    assert inspect.signature(memory.sampled_residency).parameters["page"].default == mmap.PAGESIZE  # the system's
    calls = []

    def half_resident(offset, length):  # even pages in memory, odd ones not
        calls.append((offset, length))
        assert offset % page == 0 and length > 0 and offset + length <= 10 + 70_000 * page
        return sum(1 for p in range(offset // page, -(-(offset + length) // page)) if p % 2 == 0)

    assert memory.sampled_residency(half_resident, 10, 0, page) == 0 and calls == []
    small = memory.sampled_residency(half_resident, 10, 100 * page, page)  # 101 pages: one call over all
    assert calls == [(0, 10 + 100 * page)] and small == 51 * page
    calls.clear()
    big = memory.sampled_residency(half_resident, 10, 70_000 * page, page, max_pages=16_384, run_pages=64)
    assert len(calls) == 256 and calls[0][0] == 0 and calls[-1][0] + calls[-1][1] == 10 + 70_000 * page
    assert abs(big / (70_000 * page) - 0.5) < 0.01  # the runs' share, scaled to the range


def test_auto_reads_cached_sets_larger_than_the_limit_through_the_mapping():
    gib = 2**30
    facts = memory.MemoryFacts(gib, "/cg/memory.max", 10 * gib, 0)
    asked = []

    def resident(n):
        return lambda: asked.append(n) or n

    assert memory.choose_read("auto", gib // 2, facts, resident(0)) == (
        "mmap",
        "auto: the sets (512.0 MiB) fit in 1024.0 MiB this process may use (the cgroup limit 1024.0 MiB "
        "(/cg/memory.max) less 0.0 MiB private, 10240.0 MiB available RAM); mmap",
        False,
    )
    assert asked == []  # residency is measured only when the sets do not fit
    cached = memory.choose_read("auto", 3 * gib, facts, resident(5 * gib // 2))
    assert cached.path == "mmap" and cached.fragile
    assert "2560.0 MiB of them are in memory already and the 512.0 MiB left fit" in cached.why
    partly = memory.choose_read("auto", 3 * gib, facts, resident(gib))
    assert partly.path == "direct" and not partly.fragile and "(1024.0 MiB of them in memory already)" in partly.why
    assert memory.choose_read("auto", 3 * gib, facts, resident(0)).why.startswith("auto: the sets (3072.0 MiB) exceed")
    # pages charged to the cgroup itself count against its limit: only those cached outside it are free
    own = facts._replace(cgroup_cache=gib)
    thrash = memory.choose_read("auto", 3 * gib, own, resident(5 * gib // 2))  # 1.5 GiB outside: 1.5 left > 1
    assert thrash.path == "direct" and "(1536.0 MiB of them in memory already (1024.0 MiB more charged" in thrash.why
    fits = memory.choose_read("auto", 3 * gib, facts._replace(cgroup_cache=gib // 2), resident(3 * gib))
    assert fits.path == "mmap" and fits.fragile and "2560.0 MiB of them are in memory already (512.0 MiB" in fits.why
    no_limit = memory.MemoryFacts(None, "", gib, 0, 5 * gib)  # no cgroup: nothing is charged to one
    assert memory.choose_read("auto", 3 * gib, no_limit, resident(5 * gib // 2)).path == "mmap"


def test_cgroup_cache_reads_the_limits_memory_stat():
    stats = {
        "/cg2/job/memory.stat": "anon 4096\nfile 123456789\nkernel 8192\n",
        "/cg1/memory/job/memory.stat": "cache 5\nrss 7\ntotal_cache 987654\ntotal_rss 9\n",
    }
    read = stats.get  # a Path's text, or None
    assert memory.cgroup_cache("/cg2/job/memory.max", lambda p: read(str(p))) == 123456789
    assert memory.cgroup_cache("/cg1/memory/job/memory.limit_in_bytes", lambda p: read(str(p))) == 987654
    assert memory.cgroup_cache("/nowhere/memory.max", lambda p: read(str(p))) == 0
    assert memory.cgroup_cache("", lambda p: read(str(p))) == 0


def _drop_cache(path):
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)


def _filesystem_of(path: Path) -> str:
    """The type of the filesystem ``path`` is on (the longest mount point above it in /proc/self/mounts)."""
    path, best = path.resolve(), ("", "")
    for line in Path("/proc/self/mounts").read_text().splitlines():
        _, mount, kind = line.split()[:3]
        if (path == Path(mount) or Path(mount) in path.parents) and len(mount) > len(best[0]):
            best = (mount, kind)
    return best[1]


def test_resident_pages_sees_what_was_read(tmp_path, backend):
    import mmap

    from featstore import _backend

    if _filesystem_of(tmp_path) == "tmpfs":
        pytest.skip(f"{tmp_path} is on tmpfs: its pages cannot be dropped from memory")
    page = mmap.PAGESIZE
    path = tmp_path / "f.bin"
    path.write_bytes(os.urandom(64 * page + 100))
    _drop_cache(path)
    mf = _backend.MappedFile(str(path))
    assert mf.resident_pages(0, mf.size) == 0
    view = np.frombuffer(mf, np.uint8)
    int(view[5 * page : 9 * page : 512].sum())  # faults in pages 5-8 (read-around may bring a few more)
    assert mf.resident_pages(0, mf.size) >= 4 and mf.resident_pages(5 * page + 7, 4 * page - 7) == 4
    assert mf.resident_pages(mf.size, 0) == 0
    with pytest.raises(ValueError, match=rf"resident_pages range offset=0 length={mf.size + 1} is outside the file"):
        mf.resident_pages(0, mf.size + 1)


def test_a_loader_whose_sets_are_cached_reads_mmap_and_chooses_again_each_epoch(stored, monkeypatch):
    fs, data = stored
    float(fs.to_torch().float().sum())  # every page in memory
    monkeypatch.setattr(memory, "memory_facts", lambda: memory.MemoryFacts(1, "/cg/memory.max", 2**34, 0))
    loader = fs.batches(64, shuffle=False, labels=False)
    assert loader.info["read"] == "mmap" and "in memory already" in loader.info["read_why"]
    assert torch.equal(torch.cat([b.features for b in loader]), data)
    monkeypatch.setattr(type(fs), "resident_bytes", lambda self: 0)  # the pages have gone
    assert torch.equal(torch.cat([b.features for b in loader]), data)
    assert loader.info["read"] == "direct" and "exceed" in loader.info["read_why"]


def test_gather_makes_a_cached_choice_again_once_it_is_old(tmp_path, monkeypatch):
    store, data, _ = make_store(tmp_path, n_rows=N, row_shape=(3, 7), dtype=torch.float16)
    fs = store["enc/layer_1"]
    float(fs.to_torch().float().sum())  # every page in memory
    monkeypatch.setattr(memory, "memory_facts", lambda: memory.MemoryFacts(1, "/cg/memory.max", 2**34, 0))
    assert fs.read_path("auto") == "mmap"
    monkeypatch.setattr(type(fs), "resident_bytes", lambda self: 0)  # the pages have gone
    assert fs.read_path("auto") == "mmap"  # a fresh choice holds
    monkeypatch.setattr(memory, "AUTO_RECHECK_S", -1.0)  # ... until it is old
    assert fs.read_path("auto") == "direct"
    assert torch.equal(fs.gather(np.arange(len(fs))), data)
    monkeypatch.setattr(type(fs), "resident_bytes", lambda self: fs.nbytes)
    assert fs.read_path("auto") == "direct"  # a choice not resting on cached pages is not made again


def test_a_loader_turns_direct_within_the_epoch_once_its_cached_pages_go(tmp_path, monkeypatch):
    store, data, _ = make_store(tmp_path, n_rows=N, row_shape=(3, 7), dtype=torch.float16)
    fs = store["enc/layer_1"]
    float(fs.to_torch().float().sum())  # every page in memory
    monkeypatch.setattr(memory, "memory_facts", lambda: memory.MemoryFacts(1, "/cg/memory.max", 2**34, 0))
    reads = []
    gather_into = type(fs).gather_into

    def recorded(self, *args, read="mmap", **kwargs):
        reads.append(read)
        return gather_into(self, *args, read=read, **kwargs)

    monkeypatch.setattr(type(fs), "gather_into", recorded)
    loader = fs.batches(64, shuffle=False, labels=False, prefetch=0)  # prefetch=0: no batch read ahead of the patch
    batches = iter(loader)
    got = [next(batches).features]
    assert loader.info["read"] == "mmap" and reads == ["mmap"]
    monkeypatch.setattr(type(fs), "resident_bytes", lambda self: 0)  # the pages go in the middle of the epoch
    monkeypatch.setattr(memory, "AUTO_RECHECK_S", -1.0)
    got += [b.features for b in batches]
    assert torch.equal(torch.cat(got), data)
    assert reads[1:] and set(reads[1:]) == {"direct"}
    assert loader.info["read"] == "direct" and "chosen again during the epoch" in loader.info["read_why"]


def test_a_block_order_loader_turns_to_whole_blocks_once_its_cached_pages_go(tmp_path, monkeypatch):
    """After the switch, the block order reads whole blocks (a BlockCache), not single rows directly."""
    from featstore.batches import block_reader

    store, data, _ = make_store(tmp_path, n_rows=N, row_shape=(3, 7), dtype=torch.float16)
    fs = store["enc/layer_1"]
    float(fs.to_torch().float().sum())
    monkeypatch.setattr(memory, "memory_facts", lambda: memory.MemoryFacts(1, "/cg/memory.max", 2**34, 0))
    blocks = []
    cache_read = block_reader.BlockCache.read

    def recorded(self, idx, out):
        blocks.append(len(idx))
        return cache_read(self, idx, out)

    monkeypatch.setattr(block_reader.BlockCache, "read", recorded)
    loader = fs.batches(16, seed=3, order="block", block_bytes=8 * 42, window_blocks=2, labels=False, prefetch=0)
    order = loader.epoch_order(0)
    batches = iter(loader)
    got = [next(batches).features]
    assert loader.info["read"] == "mmap" and blocks == []
    monkeypatch.setattr(type(fs), "resident_bytes", lambda self: 0)
    monkeypatch.setattr(memory, "AUTO_RECHECK_S", -1.0)
    got += [b.features for b in batches]
    assert torch.equal(torch.cat(got), data[torch.from_numpy(order)])
    assert sum(blocks) == len(order) - 16  # every later batch came through the block cache
    assert loader.info["read"] == "direct"


def test_a_set_gathered_with_read_auto_is_let_go_without_the_cycle_collector(tmp_path):
    """Its mapping and descriptors go as soon as the last reference does (read="auto" keeps no cycle)."""
    import gc
    import weakref

    make_store(tmp_path, n_rows=N, row_shape=(3, 7), dtype=torch.float16)
    store = FeatureStore.open(tmp_path)
    fs = store["enc/layer_1"]
    assert fs.gather([0, 5]).shape == (2, 3, 7) and fs.read_path("auto") == "mmap"
    gone = weakref.ref(fs)
    gc.disable()
    try:
        del fs, store
        assert gone() is None
    finally:
        gc.enable()
