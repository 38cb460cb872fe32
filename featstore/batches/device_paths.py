"""Which way batches reach a CUDA device: the policy behind ``batches(device=..., cache=...)``.

- "device": copy the feature sets to the GPU once, gather there with ``index_select``.
- "uva": the CUDA kernel reads rows straight from the sets' registered file pages (featstore.batches.cuda).
- "pinned": the CPU gather into a ring of pinned buffers, async copies on a side stream.
- "auto": "device" when the sets fit in ``share`` of free GPU memory, else "uva" where the kernel
  path works and the sets take at most half of the machine's RAM (registration pins their pages),
  else "pinned".

A quantised set takes every path: the device cache holds its codes and scales (``held_bytes``, what
"auto" sizes it by) and dequantises each batch on the GPU; the kernel path dequantises in the kernel.

``choose_path`` is a pure function of its arguments (sizes, free memory, what is available), so
what auto picks is tested without a GPU; ``loader_path`` gathers those facts for a BatchLoader.
"""

from __future__ import annotations

import os
from typing import NamedTuple

import torch

from ..errors import CudaUnavailableError
from ..store.memory import physical_ram
from ..store.quant import group_elems

CACHE_MODES = ("auto", "device", "uva", "pinned")
DEFAULT_DEVICE_SHARE = 0.5
SHARE_ENV = "FEATSTORE_DEVICE_CACHE_SHARE"


class PathChoice(NamedTuple):
    """The chosen path ("cpu", "device", "uva" or "pinned") and a sentence saying why."""

    path: str
    why: str


def _mb(n: int) -> str:
    return f"{n / 2**20:.1f} MiB"


def choose_path(
    cache: str,
    *,
    device_type: str,
    cuda_ok: bool,
    set_bytes: int,
    free_bytes: int,
    share: float,
    uva_ok: bool,
    uva_why: str = "",
    host_bytes: int | None = None,
    pinned_bytes: int = 0,
    uva_copies: bool = False,
) -> PathChoice:
    """Pick the path for ``cache`` given the facts; raise when a requested path cannot run.

    ``set_bytes``: bytes the device cache would hold (features and labels of every set);
    ``free_bytes``: free GPU memory; ``share``: the fraction of it the cache may take;
    ``uva_ok``/``uva_why``: whether the kernel path works here, and why not; ``host_bytes``: the
    machine's RAM (None: unknown), of which auto lets "uva" pin at most half, counting the
    ``pinned_bytes`` that other sets' registrations pin already; ``uva_copies``: registration runs in
    "copy" mode (no read-only registration on this device), which pins a copy of the sets: they count twice.
    """
    if cache not in CACHE_MODES:
        raise ValueError(f"cache must be one of {', '.join(map(repr, CACHE_MODES))}, got {cache!r}")
    if device_type == "cpu":
        if cache != "auto":
            raise ValueError(
                f"cache={cache!r} chooses how batches reach a CUDA device; pass device='cuda' or leave cache='auto'"
            )
        return PathChoice("cpu", "CPU device: a prefetch thread gathers into recycled buffers")
    if not cuda_ok:
        raise CudaUnavailableError(
            f"device='cuda' (cache={cache!r}) was requested but torch.cuda.is_available() is False on this "
            "machine; use device=None for CPU batches"
        )
    if cache == "pinned":
        return PathChoice(
            "pinned", "cache='pinned' requested: gather into pinned ring buffers, async copy on a side stream"
        )
    if cache == "uva":
        if not uva_ok:
            raise CudaUnavailableError(f"cache='uva' cannot run here: {uva_why}")
        return PathChoice("uva", "cache='uva' requested: the CUDA kernel gathers from the registered file pages")
    if cache == "device":
        return PathChoice(
            "device", f"cache='device' requested: {_mb(set_bytes)} copied to the GPU once, index_select there"
        )
    budget = int(share * free_bytes)
    if set_bytes <= budget:
        return PathChoice(
            "device",
            f"the sets ({_mb(set_bytes)}) fit in {share:g} of free GPU memory ({_mb(budget)} of {_mb(free_bytes)})",
        )
    too_big = f"the sets ({_mb(set_bytes)}) exceed {share:g} of free GPU memory ({_mb(budget)})"
    held = set_bytes * (2 if uva_copies else 1)
    if uva_ok and host_bytes is not None and held + pinned_bytes > host_bytes // 2:
        copies = " (twice the sets: this device pins a copy, no read-only registration)" if uva_copies else ""
        uva_ok, uva_why = (
            False,
            (
                f"registering would pin more than half of the RAM ({_mb(host_bytes)}){copies}, with "
                f"{_mb(pinned_bytes)} pinned by other sets' registrations"
            ),
        )
    if uva_ok:
        return PathChoice("uva", f"{too_big}; the CUDA kernel gathers from the registered file pages")
    return PathChoice("pinned", f"{too_big}, and the CUDA kernel path is unavailable ({uva_why}); pinned staging")


def held_bytes(fs) -> int:
    """Bytes the device cache holds for ``fs`` (and that a registration pins, with the labels): its rows,
    or for a quantised set its one-byte codes and its float32 scales, one per vector, not the dequantised
    rows (docs/compact-storage.md)."""
    if getattr(fs, "quant", None) is None or not fs.row_bytes:
        return fs.nbytes
    return fs.nbytes + 4 * len(fs) * (fs.row_bytes // group_elems(fs.row_shape))


def device_share(share: float | None) -> float:
    """The device-cache share: ``share`` if given, else $FEATSTORE_DEVICE_CACHE_SHARE, else 0.5."""
    if share is None:
        raw = os.environ.get(SHARE_ENV)
        if raw is None:
            return DEFAULT_DEVICE_SHARE
        try:
            share = float(raw)
        except ValueError:
            raise ValueError(f"${SHARE_ENV} must be a number in (0, 1], got {raw!r}") from None
    if isinstance(share, bool) or not isinstance(share, (int, float)) or not 0 < share <= 1:
        raise ValueError(f"cache_share must be a number in (0, 1], got {share!r}")
    return float(share)


def loader_path(
    cache: str, device: torch.device, set_bytes: int, share: float | None, sets=()
) -> tuple[PathChoice, dict]:
    """Gather the facts for ``choose_path`` on this machine (``sets``: the loader's feature sets, whose own
    registrations are not counted as pinned by others); returns the choice and the facts (for info).
    ``set_bytes`` counts each set's ``nbytes``; a quantised set's scales are added here (:func:`held_bytes`)."""
    set_bytes += sum(held_bytes(fs) - fs.nbytes for fs in sets)  # a quantised set's scales are held too
    facts: dict = {"cache": cache, "set_bytes": set_bytes}
    cuda_ok = device.type == "cuda" and torch.cuda.is_available()
    free, uva_ok, uva_why, pinned, copies = 0, False, "not a CUDA device", 0, False
    if cuda_ok and cache in ("auto", "uva"):
        from .cuda import REGISTRY, register_mode, uva_support

        uva_ok, uva_why = uva_support(device)
        pinned = REGISTRY.pinned_bytes(exclude=sets) if uva_ok else 0
        facts["pinned_bytes"] = pinned
        if uva_ok:
            facts["register_mode"] = register_mode(device)
            copies = facts["register_mode"] == "copy"
    if share is not None:
        device_share(share)  # a bad argument is an error wherever it runs
    if cuda_ok and cache == "auto":
        free, _ = torch.cuda.mem_get_info(device)
        facts.update(free_bytes=free, share=device_share(share))
    choice = choose_path(
        cache,
        device_type=device.type,
        cuda_ok=cuda_ok,
        set_bytes=set_bytes,
        free_bytes=free,
        share=facts.get("share", DEFAULT_DEVICE_SHARE),
        uva_ok=uva_ok,
        uva_why=uva_why,
        host_bytes=physical_ram(),
        pinned_bytes=pinned,
        uva_copies=copies,
    )
    return choice, facts
