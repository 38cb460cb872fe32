"""An audit that featstore never rewrites committed data in place, run around every test.

While installed, every call that featstore's own code makes (directly or through the standard
library) to open a file for writing, truncate it, write into it with ``pwrite``/``write`` or rename
over it is checked against the manifest of the store the file belongs to:

- a finished feature set's file (complete in its manifest, or read-only on disk) is never opened for
  writing, truncated, written or renamed over;
- a file with committed rows is never truncated, and ``pwrite`` never touches its header, its
  labels or a committed row;
- the manifest itself is never opened for writing: it is only replaced by renaming a temp file.

Calls made by the tests themselves (which damage files on purpose) are not audited. Subprocesses
(the crash tests' writers) are not audited either. After a test, every finished feature-set file
under its ``tmp_path`` must be read-only (mode without any write bit).
"""

from __future__ import annotations

import builtins
import functools
import io
import os
import stat
import sys
import threading
from pathlib import Path

from featstore.store import format as fmt

_WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_TRUNC | os.O_APPEND


def _called_by_featstore() -> bool:
    frame = sys._getframe(2)
    while frame is not None:
        if frame.f_globals.get("__name__", "").startswith("featstore"):
            return True
        frame = frame.f_back
    return False


def _path_of_fd(fd: int) -> Path | None:
    try:
        target = os.readlink(f"/proc/self/fd/{fd}")
    except OSError:
        return None
    return Path(target) if target.startswith("/") else None  # not pipes or sockets


class RewriteAudit:
    """Wraps the file functions featstore uses; ``violations`` lists every rewrite seen."""

    def __init__(self) -> None:
        self.violations: list[str] = []
        self.calls_checked = 0
        self._busy = threading.local()
        self._saved: dict[tuple[object, str], object] = {}

    # ---- what a file is -------------------------------------------------------------------------
    def record_of(self, path: Path) -> tuple[Path, fmt.FeatureSetRecord] | None:
        """The store root and manifest record of the feature-set file ``path``, if it is one."""
        path = Path(os.path.abspath(path))
        for root in list(path.parents)[:8]:
            if (root / fmt.MANIFEST_NAME).is_file():
                try:
                    _, records = fmt.read_manifest(root)
                except Exception:
                    return None
                for record in records.values():
                    if os.path.abspath(root / record.file) == str(path):
                        return root, record
                return None
        return None

    def _finished(self, path: Path, found) -> bool:
        """Complete in its manifest; for a file no manifest lists, a read-only feature-set file."""
        if found is not None:
            return found[1].complete
        try:
            mode = os.stat(path).st_mode
        except OSError:
            return False
        return path.suffix == ".safetensors" and stat.S_ISREG(mode) and not mode & 0o222

    # ---- the checks -----------------------------------------------------------------------------
    def check_open(self, path, writing: bool, truncating: bool, how: str) -> None:
        if not writing and not truncating:
            return
        path = Path(os.fsdecode(path))
        self.calls_checked += 1
        if path.name == fmt.MANIFEST_NAME:
            self.violations.append(f"{how}: the manifest {path} was opened for writing instead of replaced by a rename")
            return
        found = self.record_of(path)
        if self._finished(path, found):
            self.violations.append(f"{how}: the finished file {path} was opened for writing")
        elif truncating and found is not None and found[1].rows_committed:
            self.violations.append(f"{how}: {path}, which has committed rows, was truncated")

    def check_truncate(self, path, how: str) -> None:
        if path is None:
            return
        self.calls_checked += 1
        found = self.record_of(Path(path))
        if self._finished(Path(path), found) or (found is not None and found[1].rows_committed):
            self.violations.append(f"{how}: {path}, which holds committed data, was truncated")

    def check_write(self, fd: int, offset: int | None, length: int, how: str) -> None:
        path = _path_of_fd(fd)
        if path is None or not length:
            return
        self.calls_checked += 1
        found = self.record_of(path)
        if self._finished(path, found):
            self.violations.append(f"{how}: {length} bytes were written into the finished file {path}")
            return
        if found is None:
            return
        record = found[1]
        if offset is None:
            self.violations.append(f"{how}: {path} of feature set {record.key!r} was written without an offset")
            return
        layout = record.layout
        header_bytes = os.path.getsize(path) - layout.data_bytes
        rb, sb = layout.row_bytes, layout.scale_count * 4
        end = offset + length
        scales_at = header_bytes + layout.scales_begin
        if offset < header_bytes:
            self.violations.append(f"{how}: the header of {path} was written again")
        in_scales = sb and offset >= scales_at and end <= scales_at + layout.scales_bytes
        if end > header_bytes + layout.features_bytes and not in_scales:
            self.violations.append(f"{how}: the labels of {path} were written again")
        for a, b in record.committed:
            lo, hi = header_bytes + a * rb, header_bytes + b * rb
            if in_scales:  # a quantised set's scales of the same rows
                lo, hi = scales_at + a * sb, scales_at + b * sb
            if offset < hi and lo < end:
                self.violations.append(f"{how}: committed rows {a}..{b} of {record.key!r} in {path} were written again")

    def check_replace(self, dst, how: str) -> None:
        dst = Path(os.fsdecode(dst))
        self.calls_checked += 1
        if dst.name != fmt.MANIFEST_NAME and self.record_of(dst) is not None:
            self.violations.append(f"{how}: a file was renamed over {dst}, which holds a feature set")

    # ---- wrapping ---------------------------------------------------------------------------------
    def _guarded(self, check, *args) -> None:
        if getattr(self._busy, "on", False) or not _called_by_featstore():
            return
        self._busy.on = True
        try:
            check(*args)
        finally:
            self._busy.on = False

    def _wrap(self, owner, name: str, make) -> None:
        original = getattr(owner, name)
        self._saved[(owner, name)] = original
        # wraps: the wrapper keeps the original's name, so pickling a reference to it still works
        setattr(owner, name, functools.wraps(original)(make(original)))

    def install(self) -> RewriteAudit:
        guarded = self._guarded

        def os_open(original):
            def wrapper(path, flags, *args, **kwargs):
                guarded(self.check_open, path, bool(flags & _WRITE_FLAGS), bool(flags & os.O_TRUNC), "os.open")
                return original(path, flags, *args, **kwargs)

            return wrapper

        def py_open(original):
            def wrapper(file, mode="r", *args, **kwargs):
                if not isinstance(file, int) and isinstance(mode, str) and any(c in mode for c in "wax+"):
                    guarded(self.check_open, file, True, "w" in mode, f"open(mode={mode!r})")
                return original(file, mode, *args, **kwargs)

            return wrapper

        def truncate(original):
            def wrapper(path, length):
                guarded(self.check_truncate, path, "os.truncate")
                return original(path, length)

            return wrapper

        def ftruncate(original):
            def wrapper(fd, length):
                guarded(self.check_truncate, _path_of_fd(fd), "os.ftruncate")
                return original(fd, length)

            return wrapper

        def pwrite(original):
            def wrapper(fd, data, offset):
                guarded(self.check_write, fd, offset, len(memoryview(data).cast("B")), "os.pwrite")
                return original(fd, data, offset)

            return wrapper

        def write(original):
            def wrapper(fd, data):
                if fd > 2:
                    guarded(self.check_write, fd, None, len(memoryview(data).cast("B")), "os.write")
                return original(fd, data)

            return wrapper

        def replace(original):
            def wrapper(src, dst, *args, **kwargs):
                guarded(self.check_replace, dst, "os.replace")
                return original(src, dst, *args, **kwargs)

            return wrapper

        self._wrap(os, "open", os_open)
        self._wrap(builtins, "open", py_open)
        self._saved[(io, "open")] = io.open
        io.open = builtins.open  # the same object, as before: pickle checks io.open is builtins.open
        self._wrap(os, "truncate", truncate)
        self._wrap(os, "ftruncate", ftruncate)
        self._wrap(os, "pwrite", pwrite)
        self._wrap(os, "write", write)
        self._wrap(os, "replace", replace)
        self._wrap(os, "rename", replace)
        return self

    def uninstall(self) -> None:
        for (owner, name), original in self._saved.items():
            setattr(owner, name, original)
        self._saved.clear()


def writable_finished_files(folder: Path) -> list[str]:
    """Finished feature-set files under ``folder`` that still have a write bit."""
    bad = []
    for manifest in folder.rglob(fmt.MANIFEST_NAME):
        try:
            _, records = fmt.read_manifest(manifest.parent)
        except Exception:
            continue  # a manifest a test damaged on purpose
        for record in records.values():
            path = manifest.parent / record.file
            if record.complete and path.is_file() and path.stat().st_mode & 0o222:
                bad.append(
                    f"{path} (feature set {record.key!r}) is finished but mode {oct(path.stat().st_mode & 0o777)}"
                )
    return bad
