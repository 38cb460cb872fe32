"""featstore compiled core: copy-on-write file mappings, a multithreaded row gather, direct row reads, numpy's
permutation drawn faster."""

import os
from typing import Literal

import numpy as np
import numpy.typing as npt
import torch
from typing_extensions import Buffer

class MappedFile:
    """A whole file mapped copy-on-write (MAP_PRIVATE); its buffer is a writable 1-D byte view."""

    def __init__(self, path: str | bytes | os.PathLike[str] | os.PathLike[bytes]) -> None:
        """Map the whole file at ``path`` (opened read-only; OSError with errno and filename on failure)."""
    @property
    def path(self) -> str:
        """The mapped file's path, as given (os.fsdecode)."""
    @property
    def size(self) -> int:
        """The file's size in bytes (0 for an empty file)."""
    def advise(
        self, offset: int, length: int, advice: Literal["normal", "random", "sequential", "willneed", "dontneed"]
    ) -> None:
        """madvise(2) on [offset, offset+length), offset rounded down to the page (ValueError outside the file)."""
    def resident_pages(self, offset: int, length: int) -> int:
        """How many pages of [offset, offset+length) are in memory now (mincore(2); ValueError outside the file)."""
    def __repr__(self) -> str:
        """``<featstore._core.MappedFile path=... size=...>``."""
    def __buffer__(self, flags: int, /) -> memoryview:
        """A writable 1-D uint8 view of the mapping that keeps it alive (writes never reach the file)."""

def gather(
    src: Buffer | torch.Tensor,
    row_bytes: int,
    indices: npt.NDArray[np.int64],
    out: Buffer | torch.Tensor,
    threads: int = 0,
) -> None:
    """Copy row ``indices[i]`` of ``src`` (rows of ``row_bytes`` bytes) to row i of ``out``, GIL released."""

def dequant_gather(
    src: Buffer | torch.Tensor,
    scales: Buffer | torch.Tensor,
    row_elems: int,
    group_elems: int,
    indices: npt.NDArray[np.int64],
    out: Buffer | torch.Tensor,
    scheme: Literal["int8", "float8_e4m3"],
    out_dtype: Literal["float16", "bfloat16", "float32"],
    threads: int = 0,
) -> None:
    """Gather rows ``indices[i]`` of one-byte codes and write float32(code) * scale, rounded to ``out_dtype``."""

def read_rows(
    fd: int,
    offset: int,
    row_bytes: int,
    n_rows: int,
    indices: npt.NDArray[np.int64],
    out: Buffer | torch.Tensor,
    queue_depth: int = 32,
    max_request_bytes: int = 1048576,
    path: str | bytes | os.PathLike[str] | os.PathLike[bytes] = "",
    pos: npt.NDArray[np.int64] | None = None,
    bounce: Buffer | None = None,
    scales: Buffer | None = None,
    group_elems: int = 0,
    scheme: Literal["int8", "float8_e4m3"] = "int8",
    out_dtype: Literal["float16", "bfloat16", "float32"] = "float16",
) -> None:
    """Read row ``indices[i]`` of ``fd`` into row i (or ``pos[i]``) of ``out`` (EOFError if short; O_DIRECT pages via ``bounce``, decoded with ``scales`` as they land)."""

def permute_pcg64(out: npt.NDArray[np.int64], state: int, inc: int, has_uint32: bool, uinteger: int) -> None:
    """Fill ``out`` with numpy's ``Generator(PCG64).permutation(len(out))`` for that bit generator state, bit for bit."""

def io_engine() -> str:
    """How read_rows keeps requests in flight: 'auto: ...', 'io_uring (...)' or 'threads (why)'."""

def set_num_threads(n: int) -> None:
    """Set the size of the persistent gather thread pool (>= 1; else ValueError)."""

def get_num_threads() -> int:
    """Size of the gather thread pool (FEATSTORE_NUM_THREADS, else min(8, CPUs), unless set)."""
