"""Cgroups a benchmark makes for its readers, as SLURM would: a memory limit, and optionally a cap on the
disk's read bandwidth (so that cells are bound by a known, steady rate rather than by a disk whose speed
drifts 2x from minute to minute behind a host cache). Each is made inside this process's own group and
removed by :func:`remove`; a process joins one by writing its pid into ``procs``."""

from __future__ import annotations

import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path


@dataclass
class Group:
    """One cgroup made for a benchmark: its folder, the file that sets its limit, and its ``cgroup.procs``."""

    path: Path
    limit_file: str

    @property
    def procs(self) -> Path:
        return self.path / "cgroup.procs"

    def join(self, pid: int | None = None) -> None:
        """Moves ``pid`` (this process by default) into the group."""
        self.procs.write_text(str(pid or os.getpid()))


def _own_path(controller: str) -> tuple[str | None, str | None]:
    """This process's group under the v1 ``controller`` hierarchy and under v2 (``0::``), as /proc says."""
    lines = Path("/proc/self/cgroup").read_text().splitlines()
    v1 = next((ln.split(":", 2)[2] for ln in lines if f":{controller}:" in ln), None)
    v2 = next((ln.split(":", 2)[2] for ln in lines if ln.startswith("0::")), None)
    return v1, v2


def _fresh(group: Path, limit_file: str, value: str) -> Group | str:
    """Makes ``group`` and writes its limit, or says why not (a group whose limit is refused is removed again)."""
    group.mkdir()
    try:
        (group / limit_file).write_text(value)
    except OSError as e:
        group.rmdir()
        return f"{group / limit_file} refused {value!r} ({e.strerror})"
    return Group(group, limit_file)


def _make(controllers: tuple[str, str], name: str, files: tuple[str, str], values: tuple[str, str]) -> Group | str:
    """A fresh group ``name`` under this process's own: cgroup v1 (the first of each pair) where that
    controller is mounted, else v2 (the second); its limit file written, or why not."""
    (v1_controller, v2_controller), (v1_file, v2_file), (v1_value, v2_value) = controllers, files, values
    if os.geteuid() != 0:
        return "not root: a cgroup cannot be made (run it with sudo)"
    v1_own, v2_own = _own_path(v1_controller)
    v1 = Path("/sys/fs/cgroup") / v1_controller
    if v1_own is not None and (v1 / "cgroup.procs").exists():
        return _fresh(v1 / v1_own.lstrip("/") / name, v1_file, v1_value)
    for mount in (Path("/sys/fs/cgroup"), Path("/sys/fs/cgroup/unified")):
        ctrl = mount / "cgroup.controllers"
        if v2_own is not None and ctrl.exists() and v2_controller in ctrl.read_text().split():
            return _fresh(mount / v2_own.lstrip("/") / name, v2_file, v2_value)
    return f"no cgroup v1 {v1_controller} controller and no cgroup v2 with {v2_controller} here"


def memory_group(limit: int) -> Group | str:
    """A fresh memory cgroup limited to ``limit`` bytes (v1 ``memory.limit_in_bytes``, else v2
    ``memory.max``), or why not."""
    name = f"featstore-bench-{os.getpid()}"
    return _make(("memory", "memory"), name, ("memory.limit_in_bytes", "memory.max"), (str(limit), str(limit)))


def disk_of(path: Path) -> str | None:
    """``major:minor`` of the whole disk that holds ``path`` (a partition's parent: throttles take disks),
    or None where no block device does (tmpfs, overlayfs, NFS, a btrfs subvolume's anonymous device)."""
    dev = os.stat(path).st_dev
    sys_dev = Path(f"/sys/dev/block/{os.major(dev)}:{os.minor(dev)}")
    if not sys_dev.exists():
        return None
    if (sys_dev / "partition").exists():
        return (sys_dev.resolve().parent / "dev").read_text().strip()
    return f"{os.major(dev)}:{os.minor(dev)}"


def read_throttle(path: Path, bytes_per_s: int, memory: Group) -> Group | str:
    """A cgroup whose reads from the disk holding ``path`` are capped at ``bytes_per_s``, or why not: a
    fresh v1 blkio group (``blkio.throttle.read_bps_device``) beside the v1 ``memory`` group, or, where
    ``memory`` is a v2 group (a process sits in one v2 group only), ``io.max`` set on that same group. It
    caps O_DIRECT, io_uring and page-cache reads alike: the kernel charges each request to the group of
    the task that issued it."""
    disk = disk_of(path)
    if disk is None:
        return f"{path} is on no block device (tmpfs, overlayfs, NFS?): give --workdir on a local disk"
    if memory.limit_file == "memory.max":
        try:
            (memory.path / "io.max").write_text(f"{disk} rbps={bytes_per_s}")
        except OSError as e:
            return f"the v2 group {memory.path} takes no io.max ({e.strerror}): enable the io controller"
        return Group(memory.path, "io.max")
    name = f"featstore-bench-io-{os.getpid()}"
    files = ("blkio.throttle.read_bps_device", "io.max")
    return _make(("blkio", "io"), name, files, (f"{disk} {bytes_per_s}", f"{disk} rbps={bytes_per_s}"))


def remove(group: Group) -> None:
    """Removes the group once its last process has gone (the kernel refuses while one is still exiting)."""
    for _ in range(50):
        if not group.path.exists():  # a v2 throttle shares its memory group's folder
            return
        try:
            group.path.rmdir()
            return
        except OSError:
            time.sleep(0.2)
    print(f"warning: cgroup {group.path} still has processes after 10 s; remove it with rmdir", file=sys.stderr)
