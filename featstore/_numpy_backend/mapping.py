"""The numpy fallback's MappedFile: a whole file mapped copy-on-write, with ``madvise`` and ``mincore``
as featstore._core's MappedFile has them (same names, errors and messages)."""

from __future__ import annotations

import ctypes
import errno
import mmap
import os
import stat

import numpy as np

__all__ = ["MappedFile"]

_LIBC = ctypes.CDLL(None, use_errno=True)  # mincore(2), which Python's mmap does not offer

_ADVICE = {
    "normal": mmap.MADV_NORMAL,
    "random": mmap.MADV_RANDOM,
    "sequential": mmap.MADV_SEQUENTIAL,
    "willneed": mmap.MADV_WILLNEED,
    "dontneed": mmap.MADV_DONTNEED,
}


def _check_advise(offset: int, length: int, advice: str, size: int) -> int:
    adv = _ADVICE.get(advice)
    if adv is None:
        raise ValueError(f"unknown advice '{advice}', expected one of normal, random, sequential, willneed, dontneed")
    _check_range(offset, length, size, "advise")
    return adv


def _check_range(offset: int, length: int, size: int, what: str) -> None:
    if offset < 0 or length < 0 or offset > size or length > size - offset:
        raise ValueError(f"{what} range offset={offset} length={length} is outside the file of {size} bytes")


class MappedFile(mmap.mmap):
    """A whole file mapped copy-on-write (MAP_PRIVATE, PROT_READ|PROT_WRITE).

    Writes through a view copy the touched pages privately and never reach the file.
    A 0-byte file gives an instance of ``_EmptyMappedFile`` (a bytearray subclass) instead,
    since a 0-byte mmap is impossible; it has the same attributes.
    """

    _path: str

    def __new__(cls, path: str):
        path = os.fsdecode(path)
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        try:
            st = os.fstat(fd)
            if stat.S_ISDIR(st.st_mode):
                raise IsADirectoryError(errno.EISDIR, os.strerror(errno.EISDIR), path)
            if st.st_size == 0:
                return _EmptyMappedFile(path)
            self = super().__new__(cls, fd, st.st_size, flags=mmap.MAP_PRIVATE, prot=mmap.PROT_READ | mmap.PROT_WRITE)
        except OSError as e:
            if e.filename is None:
                raise OSError(e.errno, e.strerror, path) from None
            raise
        finally:
            os.close(fd)
        self._path = path
        return self

    @property
    def path(self) -> str:
        return self._path

    @property
    def size(self) -> int:  # type: ignore[override]  # shadows mmap.size(), which would fstat the file
        return len(self)

    def advise(self, offset: int, length: int, advice: str) -> None:
        """madvise(2) on [offset, offset+length); offset is rounded down to the page.

        Note: on this MAP_PRIVATE mapping "dontneed" discards privately written (copy-on-write) pages.
        """
        adv = _check_advise(offset, length, advice, len(self))
        if length == 0:
            return
        start = offset - offset % mmap.PAGESIZE
        self.madvise(adv, start, offset + length - start)

    def resident_pages(self, offset: int, length: int) -> int:
        """How many pages of [offset, offset+length) are in memory now (mincore(2), through ctypes)."""
        _check_range(offset, length, len(self), "resident_pages")
        if length == 0:
            return 0
        start = offset - offset % mmap.PAGESIZE
        vec = (ctypes.c_ubyte * -(-(offset + length - start) // mmap.PAGESIZE))()
        anchor = ctypes.c_char.from_buffer(self)  # the mapping's address; released before returning
        try:
            if _LIBC.mincore(
                ctypes.c_void_p(ctypes.addressof(anchor) + start), ctypes.c_size_t(offset + length - start), vec
            ):
                err = ctypes.get_errno()
                raise OSError(err, os.strerror(err), self._path)
        finally:
            del anchor
        return int((np.frombuffer(memoryview(vec).cast("B"), np.uint8) & 1).sum())

    def __repr__(self) -> str:
        return f"<featstore._numpy_backend.MappedFile path={self._path!r} size={len(self)}>"


class _EmptyMappedFile(bytearray):
    """MappedFile of a 0-byte file: an empty writable buffer."""

    def __init__(self, path: str):
        super().__init__()
        self._path = path

    path = MappedFile.path
    size = property(lambda self: 0)

    def advise(self, offset: int, length: int, advice: str) -> None:
        _check_advise(offset, length, advice, 0)

    def resident_pages(self, offset: int, length: int) -> int:
        _check_range(offset, length, 0, "resident_pages")
        return 0

    def __repr__(self) -> str:
        return f"<featstore._numpy_backend.MappedFile path={self._path!r} size=0>"
