"""The memory this process may use, and the read path that follows from it: ``mmap`` or ``direct``.

A feature set read through its mapping is fast while its pages stay in memory. When it does not
fit, every batch faults pages in from disk one at a time, and the page cache that the mapping
fills counts against the memory cgroup (SLURM puts each job in one). The direct path reads rows
with many requests in flight and needs no memory but the batch.

The memory this process may use is the tightest of

- the memory cgroup's limit (cgroup v2 ``memory.max``, v1 ``memory.limit_in_bytes``, the smallest
  along the process's cgroup path, found through ``/proc/self/cgroup`` and ``/proc/self/mountinfo``),
  less the private memory this process already holds (its heap: ``RssAnon`` + ``RssShmem``; file
  pages are reclaimable page cache, and the sets' own are counted as resident below);
- the RAM available now (``MemAvailable`` of ``/proc/meminfo``, which already leaves out what this
  and every other process holds).

What the sets need of it is what is not in memory already: pages in the page cache, whoever read
them, cost a mapping nothing new (a file read by an earlier job on the node, or by a process outside
this cgroup). :func:`sampled_residency` estimates that share with ``mincore`` on a sample of pages;
the page cache charged to the cgroup itself (its ``memory.stat``) is no gift, as it counts against
the limit, and is taken off that share.

:func:`usable_bytes`, :func:`sampled_residency` and :func:`choose_read` are pure functions of those
facts (tested without a cgroup); :func:`memory_facts` reads them on this machine.
"""

from __future__ import annotations

import mmap
import os
import threading
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import NamedTuple, Protocol

READ_MODES = ("auto", "mmap", "direct")
# cgroup v1 writes "no limit" as the largest page-aligned counter (2**63 - 4096 on 4 KiB pages).
_NO_LIMIT = 1 << 62


class MemoryFacts(NamedTuple):
    """What :func:`usable_bytes` needs, as read on this machine (None: not known or no limit)."""

    cgroup_limit: int | None  # the tightest memory cgroup limit on this process, bytes
    cgroup_file: str  # the file it came from ("" when there is none)
    available: int | None  # MemAvailable, bytes
    resident: int  # this process's private resident memory (RssAnon + RssShmem, else VmRSS), bytes
    cgroup_cache: int = 0  # page cache charged to that cgroup (memory.stat: v2 file, v1 total_cache), bytes

    @property
    def usable(self) -> int | None:
        return usable_bytes(self.cgroup_limit, self.available, self.resident)


class ReadChoice(NamedTuple):
    """The read path ("mmap" or "direct"), a sentence saying why, and whether the choice rests on pages
    being in memory already (``fragile``: it holds only while they stay, so a loader checks it again)."""

    path: str
    why: str
    fragile: bool = False


def usable_bytes(cgroup_limit: int | None, available: int | None, resident: int) -> int | None:
    """The memory this process may still use: ``min(cgroup_limit - resident, available)``, never
    negative; None when neither limit is known."""
    bounds = []
    if cgroup_limit is not None:
        bounds.append(cgroup_limit - resident)
    if available is not None:
        bounds.append(available)
    return max(0, min(bounds)) if bounds else None


def _mb(n: int) -> str:
    return f"{n / 2**20:.1f} MiB"


def sampled_residency(
    count_resident: Callable[[int, int], int],
    start: int,
    nbytes: int,
    page: int = mmap.PAGESIZE,
    max_pages: int = 16384,
    run_pages: int = 64,
) -> int:
    """Bytes of [start, start + nbytes) in memory, estimated from ``count_resident(offset, length)``
    (pages resident in that range; a MappedFile's ``resident_pages``): every page when there are at
    most ``max_pages``, else ``max_pages // run_pages`` runs of ``run_pages`` pages spread evenly.
    ``page`` is the system's page size, the unit ``count_resident`` counts in (64 KiB on some arm64
    and ppc64le kernels)."""
    if nbytes <= 0:
        return 0
    first = start - start % page
    pages = -(-(start + nbytes - first) // page)
    if pages <= max_pages:
        return min(nbytes, count_resident(first, start + nbytes - first) * page)
    runs = max(1, max_pages // run_pages)
    hit = 0
    for r in range(runs):
        at = first + (r * (pages - run_pages) // max(1, runs - 1)) * page
        hit += count_resident(at, min(run_pages * page, start + nbytes - at))
    return min(nbytes, int(nbytes * hit / (runs * run_pages)))


def choose_read(read: str, set_bytes: int, facts: MemoryFacts, resident: Callable[[], int] | None = None) -> ReadChoice:
    """The read path for ``read`` ("auto", "mmap" or "direct") and sets of ``set_bytes`` in all:
    auto is "mmap" when what is not in memory yet fits in :func:`usable_bytes` (or nothing says how
    much memory there is), else "direct". ``resident()`` gives the sets' bytes in memory now; it is
    asked only when the whole sets do not fit."""
    if read not in READ_MODES:
        raise ValueError(f"read must be one of {', '.join(map(repr, READ_MODES))}, got {read!r}")
    if read != "auto":
        return ReadChoice(read, f"read={read!r} requested")
    usable = facts.usable
    if usable is None:
        return ReadChoice("mmap", "auto: no memory limit or available RAM is known here; mmap")
    limit = (
        f"the cgroup limit {_mb(facts.cgroup_limit)} ({facts.cgroup_file}) less {_mb(facts.resident)} private, "
        if facts.cgroup_limit is not None
        else ""
    )
    avail = f"{_mb(facts.available)} available RAM" if facts.available is not None else "no available-RAM figure"
    where = f"{_mb(usable)} this process may use ({limit}{avail})"
    if set_bytes <= usable:
        return ReadChoice("mmap", f"auto: the sets ({_mb(set_bytes)}) fit in {where}; mmap")
    resident_now = min(set_bytes, max(0, resident())) if resident is not None else 0
    # Pages charged to the cgroup count against its limit: only those cached outside it are free (the
    # cgroup's whole page cache is taken as the sets' own, so this errs toward direct, never thrashing).
    held = max(0, resident_now - facts.cgroup_cache) if facts.cgroup_limit is not None else resident_now
    charged = f" ({_mb(resident_now - held)} more charged to the cgroup)" if resident_now > held else ""
    if held and set_bytes - held <= usable:
        return ReadChoice(
            "mmap",
            f"auto: the sets ({_mb(set_bytes)}) exceed {where}, but {_mb(held)} of them are in memory "
            f"already{charged} and the {_mb(set_bytes - held)} left fit; mmap while they stay",
            fragile=True,
        )
    cached = f" ({_mb(held)} of them in memory already{charged})" if resident_now else ""
    return ReadChoice("direct", f"auto: the sets ({_mb(set_bytes)}){cached} exceed {where}; direct reads")


class _Measured(Protocol):
    @property
    def nbytes(self) -> int: ...

    def resident_bytes(self) -> int: ...


def choose_read_for(read: str, sets: Iterable[_Measured], facts: MemoryFacts | None = None) -> ReadChoice:
    """:func:`choose_read` for feature sets (anything with ``nbytes`` and ``resident_bytes()``), on
    this machine's :func:`memory_facts` unless ``facts`` are given."""
    sets = list(sets)
    total = sum(fs.nbytes for fs in sets)
    return choose_read(read, total, facts or memory_facts(), lambda: sum(fs.resident_bytes() for fs in sets))


AUTO_RECHECK_S = 1.0  # a read="auto" choice that rests on cached pages is made again once it is this old


class AutoRead:
    """``read="auto"`` for ``sets``, kept up to date: a choice of mmap that rests on cached pages (fragile:
    they may be evicted) is made again when it is more than ``AUTO_RECHECK_S`` old, so reads turn direct
    within about a second of the pages going. A residency sample costs about a millisecond for 2 GiB,
    so at most ~0.1% of the time. ``on_change(choice)`` is called when the path changes."""

    def __init__(
        self,
        sets: Iterable[_Measured],
        choice: ReadChoice | None = None,
        on_change: Callable[[ReadChoice], None] | None = None,
    ):
        self.sets = list(sets)
        self.choice = choice or choose_read_for("auto", self.sets)
        self.at = time.monotonic()
        self.on_change = on_change
        self._checking = threading.Lock()  # one thread checks again; the others read on meanwhile

    def path(self) -> str:
        """The path to read with now (checked again first if the choice is fragile and old)."""
        choice = self.choice
        if not (choice.fragile and time.monotonic() - self.at > AUTO_RECHECK_S and self._checking.acquire(False)):
            return choice.path
        try:
            self.choice = fresh = choose_read_for("auto", self.sets)
            self.at = time.monotonic()
            if fresh.path != choice.path and self.on_change is not None:
                self.on_change(fresh)
        finally:
            self._checking.release()
        return fresh.path


# ---- reading the facts ----------------------------------------------------------------------


def parse_proc_cgroup(text: str) -> list[tuple[list[str], str]]:
    """The lines of ``/proc/<pid>/cgroup`` as (controllers, path); v2's line has no controllers."""
    out = []
    for line in text.splitlines():
        parts = line.split(":", 2)
        if len(parts) == 3:
            out.append(([c for c in parts[1].split(",") if c], parts[2]))
    return out


def parse_mountinfo(text: str) -> list[tuple[str, str, str, list[str]]]:
    """The cgroup mounts of ``/proc/<pid>/mountinfo`` as (fstype, mount point, root, super options)."""
    out = []
    for line in text.splitlines():
        left, sep, right = line.partition(" - ")
        fields, tail = left.split(), right.split()
        if not sep or len(fields) < 5 or len(tail) < 3 or tail[0] not in ("cgroup", "cgroup2"):
            continue
        out.append((tail[0], fields[4], fields[3], tail[2].split(",")))
    return out


def cgroup_limit(proc_cgroup: str, mountinfo: str, read: Callable[[Path], str | None]) -> tuple[int | None, str]:
    """The tightest memory limit on the cgroup path of ``proc_cgroup`` (its text), v2 and v1, and the
    file it came from. ``read(path)`` gives a file's text or None; the limit of every cgroup from the
    process's own up to the mount's root counts (a parent's limit binds its children)."""
    mounts = parse_mountinfo(mountinfo)
    best: tuple[int | None, str] = (None, "")
    for controllers, path in parse_proc_cgroup(proc_cgroup):
        if not controllers:
            fstype, filename = "cgroup2", "memory.max"
        elif "memory" in controllers:
            fstype, filename = "cgroup", "memory.limit_in_bytes"
        else:
            continue
        for kind, point, root, options in mounts:
            if kind != fstype or (kind == "cgroup" and "memory" not in options):
                continue
            rel = os.path.relpath(path, root) if path.startswith(root) else None
            if rel is None or rel.startswith(".."):
                continue
            here = Path(point) / ("" if rel == "." else rel)
            while True:
                text = read(here / filename)
                value = _limit_value(text)
                if value is not None and (best[0] is None or value < best[0]):
                    best = (value, str(here / filename))
                if here == Path(point):
                    break
                here = here.parent
    return best


def cgroup_cache(limit_file: str, read: Callable[[Path], str | None]) -> int:
    """The page cache charged to the cgroup whose limit is ``limit_file`` (its ``memory.stat``: v2
    ``file``, v1 ``total_cache``, which counts its children too), bytes; 0 where it cannot be read."""
    if not limit_file:
        return 0
    field = "file" if limit_file.endswith("memory.max") else "total_cache"
    for line in (read(Path(limit_file).parent / "memory.stat") or "").splitlines():
        name, _, value = line.partition(" ")
        if name == field and value.strip().isdigit():
            return int(value)
    return 0


def _limit_value(text: str | None) -> int | None:
    if text is None:
        return None
    text = text.strip()
    if not text.isdigit():
        return None  # "max" (v2), or unreadable
    value = int(text)
    return value if value < _NO_LIMIT else None


def meminfo_field(text: str, field: str) -> int | None:
    """A ``kB`` field of ``/proc/meminfo`` or ``/proc/self/status`` in bytes (None if absent)."""
    for line in text.splitlines():
        name, _, rest = line.partition(":")
        if name == field:
            parts = rest.split()
            if parts and parts[0].isdigit():
                return int(parts[0]) * (1024 if len(parts) > 1 and parts[1] == "kB" else 1)
    return None


def _read(path: Path) -> str | None:
    try:
        return path.read_text()
    except (OSError, UnicodeDecodeError):
        return None


def memory_facts(proc: Path = Path("/proc")) -> MemoryFacts:
    """The facts on this machine (files that cannot be read count as "not known")."""
    limit, source = cgroup_limit(_read(proc / "self/cgroup") or "", _read(proc / "self/mountinfo") or "", _read)
    available = meminfo_field(_read(proc / "meminfo") or "", "MemAvailable")
    status = _read(proc / "self/status") or ""
    anon, shmem = meminfo_field(status, "RssAnon"), meminfo_field(status, "RssShmem")
    private = anon + (shmem or 0) if anon is not None else meminfo_field(status, "VmRSS") or 0
    return MemoryFacts(limit, source, available, private, cgroup_cache(source, _read))


def physical_ram(proc: Path = Path("/proc")) -> int | None:
    """This machine's RAM, capped by the memory cgroup's limit (bytes; None where nothing says)."""
    total = meminfo_field(_read(proc / "meminfo") or "", "MemTotal")
    if total is None:
        try:
            total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
        except (ValueError, OSError, AttributeError):
            total = None
    limit, _ = cgroup_limit(_read(proc / "self/cgroup") or "", _read(proc / "self/mountinfo") or "", _read)
    known = [x for x in (total, limit) if x is not None]
    return min(known) if known else None
