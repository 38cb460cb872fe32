"""CRC-32 checksums of what featstore writes: one per block of about 4 MiB of rows, so ``verify``
names the damaged rows to within a block."""

from __future__ import annotations

import os
import zlib

BLOCK_BYTES = 4 << 20  # checksum granularity: verify names the damaged rows to within this much data
_READ_CHUNK = 16 << 20


def block_rows_for(row_bytes: int) -> int:
    """Rows per checksum block for rows of ``row_bytes`` bytes."""
    return max(1, BLOCK_BYTES // max(1, row_bytes))


def crc32_file_range(fd: int, offset: int, length: int) -> int:
    """CRC-32 of ``length`` bytes of an open file from ``offset``, read in bounded chunks."""
    crc = 0
    end = offset + length
    while offset < end:
        chunk = os.pread(fd, min(_READ_CHUNK, end - offset), offset)
        if not chunk:
            raise OSError(f"unexpected end of file at byte {offset}")
        crc = zlib.crc32(chunk, crc)
        offset += len(chunk)
    return crc


def file_crc32(path: str | os.PathLike) -> tuple[int, int]:
    """CRC-32 and size of a whole file."""
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        size = os.fstat(fd).st_size
        return crc32_file_range(fd, 0, size), size
    finally:
        os.close(fd)


def block_crc32(fd: int, data_start: int, layout, lo: int, hi: int) -> int:
    """CRC-32 of rows lo..hi of a feature set's file (``layout``: a header.Layout): their features, then,
    for a quantised set, their scales (so ``verify`` covers both)."""
    rb = layout.row_bytes
    crc = crc32_file_range(fd, data_start + lo * rb, (hi - lo) * rb)
    sb = layout.scale_count * 4
    if sb:
        crc = zlib.crc32(os.pread(fd, (hi - lo) * sb, data_start + layout.scales_begin + lo * sb), crc)
    return crc
