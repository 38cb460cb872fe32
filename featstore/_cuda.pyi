"""featstore CUDA module: row gather from host-registered memory (raw addresses; see featstore.cuda)."""

def device_count() -> tuple[int, str]:
    """``(count, why)``: devices the CUDA runtime sees; ``(0, reason)`` without a usable GPU. Never raises."""

def read_only_register_supported(device: int) -> bool:
    """Whether ``device`` can map registered host memory read-only (cudaHostRegisterReadOnly)."""

def host_register(ptr: int, nbytes: int, read_only: bool, device: int) -> bool:
    """cudaHostRegister the range; True if registered now, False if it already was (else RuntimeError)."""

def host_unregister(ptr: int) -> bool:
    """cudaHostUnregister ``ptr``; False if it was not registered."""

def device_pointer(ptr: int, device: int) -> int:
    """Device address of registered host memory at ``ptr`` (cudaHostGetDevicePointer)."""

def gather(
    src: int,
    n_rows: int,
    row_bytes: int,
    rows: int,
    pos: int,
    n: int,
    out: int,
    bad: int,
    device: int,
    stream: int,
) -> None:
    """``out[pos[k]] = src[rows[k]]`` for k < n on ``stream`` (device addresses as ints; async)."""

def dequant_gather(
    src: int,
    n_rows: int,
    row_elems: int,
    group_elems: int,
    scales: int,
    rows: int,
    pos: int,
    n: int,
    out: int,
    scheme: str,
    out_dtype: str,
    bad: int,
    device: int,
    stream: int,
) -> None:
    """``out[pos[k]] = float32(code) * scale`` of row ``rows[k]``, rounded to ``out_dtype`` as the core does (async)."""
