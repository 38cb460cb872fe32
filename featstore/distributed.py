"""torch.distributed for featstore: the process group of a torchrun job, and how work is split by rank.

featstore coordinates ranks with torch.distributed only (barriers, broadcasts and all-reduces of the
default process group). Under ``torchrun`` (``WORLD_SIZE`` > 1 in the environment) the first featstore
call that needs ranks initialises the group if the caller has not: gloo on the CPU, NCCL on CUDA,
with a timeout (``FEATSTORE_DIST_TIMEOUT_S``, default 1800 s) so a rank that died makes the others
fail with an error instead of waiting for ever.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import timedelta

import numpy as np
import torch

DEFAULT_TIMEOUT_S = 1800.0

__all__ = [
    "Ranks",
    "all_sum_or_fail",
    "check_device",
    "current_ranks",
    "ensure_process_group",
    "resolve_ranks",
    "shard_order",
    "split_evenly",
]


@dataclass(frozen=True)
class Ranks:
    """This process's place in a job: ``rank`` of ``world_size`` (``world_size == 1``: no group)."""

    rank: int = 0
    world_size: int = 1

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def timeout_s() -> float:
    """The process-group timeout: ``FEATSTORE_DIST_TIMEOUT_S`` seconds (default 1800)."""
    raw = os.environ.get("FEATSTORE_DIST_TIMEOUT_S", "")
    try:
        value = float(raw) if raw else DEFAULT_TIMEOUT_S
    except ValueError:
        raise ValueError(f"FEATSTORE_DIST_TIMEOUT_S must be a number of seconds, got {raw!r}") from None
    if value <= 0:
        raise ValueError(f"FEATSTORE_DIST_TIMEOUT_S must be positive, got {raw!r}")
    return value


def current_ranks() -> Ranks:
    """Rank and world size of the initialised default process group, else ``Ranks(0, 1)``."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return Ranks(dist.get_rank(), dist.get_world_size())
    return Ranks()


def ensure_process_group(device: str | torch.device | None = "cpu") -> Ranks:
    """Initialise the default process group from the torchrun environment when ``WORLD_SIZE`` > 1 and
    none is initialised (gloo for a CPU ``device``, NCCL for CUDA, with :func:`timeout_s`); return the
    ranks. Outside torchrun (no ``WORLD_SIZE``, or 1) nothing happens and this is ``Ranks(0, 1)``."""
    import torch.distributed as dist

    check_device(device if device is not None else "cpu")
    if dist.is_available() and dist.is_initialized():
        return current_ranks()
    world = int(os.environ.get("WORLD_SIZE", "1") or 1)
    if world <= 1:
        return Ranks()
    if not dist.is_available():
        raise RuntimeError("WORLD_SIZE > 1 but this torch build has no torch.distributed; run without torchrun")
    dev = torch.device(device if device is not None else "cpu")
    backend = "nccl" if dev.type == "cuda" else "gloo"
    if backend == "nccl":
        torch.cuda.set_device(local_device(dev))
    dist.init_process_group(backend=backend, timeout=timedelta(seconds=timeout_s()))
    _owned.append(True)
    return current_ranks()


_owned: list[bool] = []  # set when featstore initialised the group, so shutdown() destroys only its own


def shutdown(wait_for_ranks: bool = False) -> None:
    """Destroy the process group if :func:`ensure_process_group` created it (the command line calls this).

    ``wait_for_ranks`` (a command that succeeded): a barrier first, so no rank tears down its
    connections while another still uses them (gloo then aborts the other rank at exit); a barrier
    that fails (a rank is gone) is ignored, the group is destroyed either way."""
    import torch.distributed as dist

    if _owned and dist.is_available() and dist.is_initialized():
        if wait_for_ranks:
            try:
                dist.barrier()
            except Exception:  # a rank that is gone: nothing left to wait for
                pass
        dist.destroy_process_group()
    _owned.clear()


def check_device(device: str | torch.device) -> torch.device:
    """``device`` as a torch.device, once it is known to be usable here: a name torch knows, and for
    CUDA a torch built with CUDA that sees the GPU. Raises ValueError for a name torch does not know,
    CudaUnavailableError (saying what to do) for a CUDA device this process cannot use."""
    from .errors import CudaUnavailableError

    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError, ValueError):
        raise ValueError(f"unknown device {device!r}; use cpu, cuda or cuda:N (a GPU's index)") from None
    if dev.type != "cuda":
        return dev
    if torch.version.cuda is None:
        raise CudaUnavailableError(
            f"device {str(device)!r} asked for, but this torch ({torch.__version__}) was built without CUDA; "
            "use --device cpu (device='cpu'), or install a CUDA build of torch"
        )
    count = torch.cuda.device_count()
    if count == 0:
        raise CudaUnavailableError(
            f"device {str(device)!r} asked for, but torch sees no CUDA GPU (CUDA_VISIBLE_DEVICES="
            f"{os.environ.get('CUDA_VISIBLE_DEVICES', 'unset')}); use --device cpu (device='cpu') or run where a GPU is"
        )
    if dev.index is not None and dev.index >= count:
        raise CudaUnavailableError(
            f"device {str(device)!r} asked for, but torch sees {count} CUDA GPU(s) (cuda:0 to cuda:{count - 1})"
        )
    return dev


def local_device(device: str | torch.device) -> torch.device:
    """``cuda`` without an index means this rank's GPU (``LOCAL_RANK``) under torchrun; else unchanged."""
    dev = torch.device(device)
    if dev.type == "cuda" and dev.index is None and "LOCAL_RANK" in os.environ:
        return torch.device("cuda", int(os.environ["LOCAL_RANK"]))
    return dev


def resolve_ranks(rank: int | None, world_size: int | None) -> Ranks:
    """Explicit ``rank``/``world_size`` (both or neither), else those of the initialised process group."""
    if rank is None and world_size is None:
        return current_ranks()
    if rank is None or world_size is None:
        raise ValueError(f"give both rank and world_size or neither (got rank={rank!r}, world_size={world_size!r})")
    for name, v in (("rank", rank), ("world_size", world_size)):
        if isinstance(v, bool) or not isinstance(v, (int, np.integer)):
            raise ValueError(f"{name} must be an integer, got {v!r}")
    if world_size < 1 or not 0 <= rank < world_size:
        raise ValueError(f"need world_size >= 1 and 0 <= rank < world_size, got rank={rank}, world_size={world_size}")
    return Ranks(int(rank), int(world_size))


def shard_order(order: np.ndarray, rank: int, world_size: int, drop_last: bool = False) -> np.ndarray:
    """Rank ``rank``'s share of one epoch's ``order``, as torch's DistributedSampler splits it: the order is
    padded by wrapping around to a multiple of ``world_size`` (or, with ``drop_last``, cut to one), then
    the rank takes ``order[rank::world_size]``. The shares are disjoint (but for the padding) and together
    hold every row."""
    n = len(order)
    if world_size == 1:
        return order
    if drop_last:
        total = (n // world_size) * world_size
        order = order[:total]
    else:
        total = -(-n // world_size) * world_size
        if total > n and n:
            order = np.concatenate([order, np.resize(order, total - n)])
    return np.ascontiguousarray(order[rank:total:world_size])


def split_evenly(n_items: int, rank: int, world_size: int) -> range:
    """Rank ``rank``'s contiguous share of ``n_items`` items (sizes differ by at most one)."""
    base, extra = divmod(n_items, world_size)
    start = rank * base + min(rank, extra)
    return range(start, start + base + (rank < extra))


def on_main(ranks: Ranks, step):
    """Run ``step()`` on rank 0 only, while the other ranks wait; every rank returns after it, and when it
    failed there the other ranks raise DistributedError with its message (instead of waiting for ever)."""
    if not ranks.distributed:
        return step()
    import torch.distributed as dist

    from .errors import DistributedError

    value, failure = None, None
    message: list[str | None] = [None]
    if ranks.is_main:
        try:
            value = step()
        except BaseException as exc:  # told to the other ranks, then raised here
            failure = exc
            message = [f"{type(exc).__name__}: {exc}"]
    dist.broadcast_object_list(message, src=0)
    if failure is not None:
        raise failure
    if message[0] is not None:
        raise DistributedError(f"rank 0 failed: {message[0]}")
    return value


def all_sum(ranks: Ranks, value: int) -> int:
    """The sum of ``value`` over every rank (``value`` itself without a group)."""
    if not ranks.distributed:
        return int(value)
    import torch.distributed as dist

    t = torch.tensor([int(value)], dtype=torch.int64, device=_collective_device())
    dist.all_reduce(t)
    return int(t.item())


def all_sum_or_fail(ranks: Ranks, value: int, failure: BaseException | None = None) -> int:
    """:func:`all_sum` that also carries failures, for loops where every rank makes the same collectives.

    A rank that failed calls it once with its exception (``value`` is then ignored) and raises its own
    error afterwards; every other rank's matching call raises DistributedError naming the failed
    rank(s) and their messages, instead of waiting in its next collective until the timeout.
    """
    if not ranks.distributed:
        return int(value)
    import torch.distributed as dist

    from .errors import DistributedError

    t = torch.tensor(
        [0 if failure else int(value), int(failure is not None)], dtype=torch.int64, device=_collective_device()
    )
    dist.all_reduce(t)
    if int(t[1].item()) == 0:
        return int(t[0].item())
    messages: list = [None] * ranks.world_size
    dist.all_gather_object(messages, None if failure is None else f"{type(failure).__name__}: {failure}")
    if failure is not None:
        return 0  # the caller raises its own error
    raise DistributedError("; ".join(f"rank {r} failed: {m}" for r, m in enumerate(messages) if m is not None))


def barrier(ranks: Ranks) -> None:
    """Wait until every rank is here (nothing without a group)."""
    if ranks.distributed:
        import torch.distributed as dist

        dist.barrier()


def _collective_device() -> torch.device:
    import torch.distributed as dist

    return torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else torch.device("cpu")
