"""BatchLoader: the epochs of a training loop over feature sets: a seeded order, each rank's share of
it, and a prefetch thread.

A background thread assembles batch b+1.. while the caller trains on batch b (the compiled gather
releases the GIL), and the caller assembles a batch itself when it comes back before the thread
has one (featstore.batches.prefetch). How a batch is assembled is the assemblers' job: on the CPU into recycled
buffers, on CUDA through one of the paths of featstore.batches.device_paths (the sets cached on the
device, the kernel over registered file pages, or a ring of pinned buffers). In every CUDA path the
consumer's stream waits on the batch's event. On a machine without CUDA the same loop runs on the CPU.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np
import torch

from .. import _backend
from ..distributed import resolve_ranks, shard_order
from ..errors import CudaUnavailableError
from ..indexing import normalize_rows
from ..store import FeatureSet
from ..store.memory import AutoRead, ReadChoice, choose_read_for
from . import cuda
from .assemblers import Batch, BatchSpec, CpuAssembler, PinnedAssembler, RecyclingBuffers
from .device_assemblers import DeviceCacheAssembler, UvaAssembler
from .device_paths import loader_path
from .orders import (
    DEFAULT_BLOCK_BYTES,
    DEFAULT_WINDOW_BLOCKS,
    ORDERS,
    OrderAhead,
    block_order,
    block_rows_for,
    block_share,
    uniform_permutation,
)
from .prefetch import prefetched

AHEAD_MAX_ROWS = 8 << 20  # orders drawn ahead up to 64 MiB (a set of 8M rows): a second order costs memory


def _fresh_seed() -> int:
    entropy = np.random.SeedSequence().entropy
    assert isinstance(entropy, int)  # SeedSequence() given no entropy draws a fresh int
    return int(entropy % (1 << 63))


class BatchLoader:
    """Iterate over batches of one or several feature sets; one epoch per ``iter()``.

    Arguments: ``batch_size``; ``shuffle`` (default True) with ``seed`` (epoch ``e`` uses the
    permutation of ``(seed, e)``, so runs repeat exactly; for up to 8M rows the next epoch's order is drawn
    on a background thread while an epoch runs, featstore.batches.orders.OrderAhead); ``drop_last``; ``device`` (None or 'cpu',
    or a CUDA device); ``prefetch`` batches gathered ahead (0: no thread); ``rows`` to restrict to
    a subset (e.g. a train split); ``labels``: True (the first set's stored labels), False, or a
    length-N array; ``epoch`` to start from (``set_epoch`` changes it, as DistributedSampler does);
    ``rank`` and ``world_size`` (default: those of an initialised torch.distributed process group, else
    0 and 1): each rank serves its share of every epoch's order, split as DistributedSampler splits it
    (padded by wrapping to a multiple of ``world_size``, or cut to one with ``drop_last``).
    On CUDA, ``cache`` picks how batches reach the device: "auto" (default), "device", "uva" or
    "pinned", with ``cache_share`` the fraction of free GPU memory a device cache may take (default
    $FEATSTORE_DEVICE_CACHE_SHARE or 0.5); see featstore.batches.device_paths. ``read`` picks how rows
    leave the files on the CPU and pinned paths: "mmap" (the mapping), "direct" (preadv straight into
    the batch, for sets larger than memory) or "auto" (default: mmap when what of the sets is not in the
    page cache already fits in the memory this process may use, featstore.store.memory; checked again
    each epoch when it rests on cached pages). ``order``: "random" (default, a uniform
    permutation) or "block" (quasi-random for sets larger than memory, featstore.batches.orders:
    blocks of ``block_bytes`` of rows shuffled, then rows within windows of ``window_blocks``
    blocks). ``info`` says which paths run and why.
    """

    def __init__(
        self,
        sets: dict[str, FeatureSet],
        batch_size: int,
        shuffle: bool = True,
        seed: int | None = 0,
        drop_last: bool = False,
        device: str | torch.device | None = None,
        prefetch: int = 2,
        rows=None,
        labels=True,
        epoch: int = 0,
        single: bool | None = None,
        cache: str = "auto",
        cache_share: float | None = None,
        rank: int | None = None,
        world_size: int | None = None,
        read: str = "auto",
        order: str = "random",
        block_bytes: int = DEFAULT_BLOCK_BYTES,
        window_blocks: int = DEFAULT_WINDOW_BLOCKS,
    ):
        if not sets:
            raise ValueError("batches need at least one feature set")
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
        if isinstance(prefetch, bool) or not isinstance(prefetch, int) or prefetch < 0:
            raise ValueError(f"prefetch must be a non-negative integer, got {prefetch!r}")
        self.sets = dict(sets)
        first = next(iter(self.sets.values()))
        self.n_rows = len(first)
        for key, fs in self.sets.items():
            if len(fs) != self.n_rows:
                raise ValueError(
                    f"feature sets in one batch must have the same rows: {first.key!r} has {self.n_rows}, {key!r} has {len(fs)}"
                )
        self.single = len(self.sets) == 1 if single is None else single
        self.batch_size = batch_size
        self.shuffle = shuffle
        self.seed = _fresh_seed() if seed is None else int(seed)
        self.drop_last = drop_last
        self.prefetch = prefetch
        self.epoch = int(epoch)
        self.ranks = resolve_ranks(rank, world_size)
        if seed is None and shuffle and self.ranks.distributed:
            raise ValueError(
                f"rank {self.ranks.rank} of {self.ranks.world_size}: every rank must shuffle with the same "
                "seed to get disjoint shares; pass seed=<int>"
            )
        self.rows = self._check_rows(rows)
        self.all_rows = rows is None  # self.rows is arange(n_rows)
        for fs in self.sets.values():
            fs.check_committed(self.rows)  # only for sets opened with allow_incomplete
        self.labels = self._check_labels(labels)
        self.device = torch.device(device) if device is not None else torch.device("cpu")
        if self.device.type not in ("cpu", "cuda"):
            raise ValueError(f"device must be 'cpu' or a CUDA device, got {str(self.device)!r}")
        if self.device.type == "cuda" and self.device.index is None and torch.cuda.is_available():
            self.device = torch.device("cuda", torch.cuda.current_device())  # 'cuda' means the current GPU, fixed now
        self.info: dict[str, Any] = self._choose_path(cache, cache_share)
        self.read = self._choose_read(read)
        self.order, self.block_rows, self.window_blocks = self._check_order(order, block_bytes, window_blocks)
        # the device cache / registrations, built once, reused across epochs
        self._assembler_cache: DeviceCacheAssembler | UvaAssembler | None = None
        self._cpu_buffers: dict[str, RecyclingBuffers] | None = None
        self._next_order: OrderAhead | None = None  # the next epoch's order, drawn while this one runs

    def _choose_path(self, cache: str, cache_share: float | None) -> dict[str, Any]:
        """The device path (featstore.batches.device_paths); auto falls back to pinned if registration fails."""
        set_bytes = sum(fs.nbytes for fs in self.sets.values()) + (8 * self.n_rows if self.labels is not None else 0)
        choice, facts = loader_path(cache, self.device, set_bytes, cache_share, sets=list(self.sets.values()))
        info = {"path": choice.path, "why": choice.why, **facts}
        if choice.path == "uva":
            index = self.device.index
            try:
                for fs in self.sets.values():
                    cuda.REGISTRY.device_pointer(fs, index)
            except CudaUnavailableError as exc:
                if cache == "uva":
                    raise
                info.update(path="pinned", why=f"{choice.why}, but registration failed ({exc}); pinned staging")
        return info

    def _choose_read(self, read: str) -> str:
        """The read path of the CPU and pinned assemblers (the device and uva paths read the mapping).
        A choice that rests on pages already in memory (auto's mmap for sets larger than the memory
        allowed) is made again at each epoch's start, in case they have gone, and within an epoch
        about once a second (:class:`AutoRead`): the rest of the epoch reads directly once they have."""
        choice = choose_read_for(read, self.sets.values())
        self._read_choice = choice
        self._read_again = choice.fragile
        if self.info["path"] in ("device", "uva"):
            if read == "direct":
                raise ValueError(f"read='direct' needs the CPU or pinned path, but cache={self.info['path']!r} runs")
            self.info.update(read="mmap", read_why=f"the {self.info['path']!r} path reads the sets' mapped pages")
            self._read_again = False
            return "mmap"
        self._say_read(choice.path, choice.why)
        return choice.path

    def _read_turned(self, choice: ReadChoice) -> None:
        """An epoch's cached pages have gone (:class:`AutoRead`): say so, as the rest of it reads directly."""
        self._say_read(choice.path, f"{choice.why} (chosen again during the epoch)")

    def _say_read(self, path: str, why: str) -> None:
        """``info``'s read, read_why and, for direct reads only, io_engine (io_uring, or the thread pool and why)."""
        self.info.update(read=path, read_why=why)
        if path == "direct":
            self.info["io_engine"] = _backend.io_engine()
        else:
            self.info.pop("io_engine", None)

    def _check_order(self, order: str, block_bytes: int, window_blocks: int) -> tuple[str, int, int]:
        if order not in ORDERS:
            raise ValueError(f"order must be one of {', '.join(map(repr, ORDERS))}, got {order!r}")
        if isinstance(window_blocks, bool) or not isinstance(window_blocks, int) or window_blocks < 1:
            raise ValueError(f"window_blocks must be a positive integer, got {window_blocks!r}")
        block_rows = block_rows_for(sum(fs.row_bytes for fs in self.sets.values()), block_bytes)
        if order == "random":
            self.info["order"] = "random"
            return order, 0, 0
        if not self.shuffle:
            raise ValueError("order='block' is a shuffled order; it cannot go with shuffle=False")
        self.info.update(order="block", block_rows=block_rows, window_blocks=window_blocks)
        return order, block_rows, window_blocks

    def _check_rows(self, rows) -> np.ndarray:
        if rows is None:
            return np.arange(self.n_rows, dtype=np.int64)
        idx, _ = normalize_rows(rows, self.n_rows)
        return idx

    def _check_labels(self, labels) -> np.ndarray | None:
        if labels is False or labels is None:
            return None
        if labels is True:
            for fs in self.sets.values():
                if fs.labels is not None:
                    return fs.labels.numpy()
            return None
        arr = labels.detach().cpu().numpy() if isinstance(labels, torch.Tensor) else np.asarray(labels)
        if arr.shape != (self.n_rows,):
            raise ValueError(f"labels must have shape ({self.n_rows},), got {arr.shape}")
        return np.ascontiguousarray(arr, dtype=np.int64)

    # ---- the epoch --------------------------------------------------------------------------
    def __len__(self) -> int:
        n, ws = len(self.rows), self.ranks.world_size
        n = n // ws if self.drop_last else -(-n // ws)  # this rank's rows per epoch
        return n // self.batch_size if self.drop_last else -(-n // self.batch_size)

    def set_epoch(self, epoch: int) -> None:
        """Choose the epoch whose permutation the next ``iter()`` uses."""
        self.epoch = int(epoch)

    def epoch_order(self, epoch: int) -> np.ndarray:
        """The row numbers this rank serves in ``epoch``, in order: its share of the epoch's order,
        which is the same on every rank (the permutation of ``(seed, epoch)``)."""
        if self.order == "block":
            blocks = block_order(self.rows, self.seed, epoch, self.block_rows, self.window_blocks)
            return block_share(blocks, self.ranks.rank, self.ranks.world_size, self.drop_last)
        order = self.rows
        if self.shuffle:
            perm = uniform_permutation(len(self.rows), self.seed, epoch)
            order = perm if self.all_rows else self.rows[perm]  # rows[perm] is perm when rows is arange
        return shard_order(order, self.ranks.rank, self.ranks.world_size, self.drop_last)

    def _take_order(self, epoch: int) -> np.ndarray:
        """``epoch_order(epoch)``, drawn ahead if the last epoch guessed it; starts drawing ``epoch + 1``'s."""
        ahead, self._next_order = self._next_order, None
        order = ahead.result() if ahead is not None and ahead.epoch == epoch else self.epoch_order(epoch)
        if self.shuffle and len(self.rows) <= AHEAD_MAX_ROWS:  # a random or a block order
            self._next_order = OrderAhead(self.epoch_order, epoch + 1)
        return order

    def __iter__(self) -> Iterator[Batch]:
        if self._read_again:
            self.read = self._choose_read("auto")
        order = self._take_order(self.epoch)
        self.epoch += 1
        bs = self.batch_size
        chunks = [order[i * bs : (i + 1) * bs] for i in range(len(self))]
        make = self._assembler(chunks)
        if self.prefetch == 0:
            for idx in chunks:
                yield make.finish(make.assemble(idx))
            return
        # direct page reads in random order wait on the disk, each thread on its own io_uring: two batches
        # are read at once (featstore.batches.prefetch). Reads through the page cache share one I/O thread
        # pool, which serves one caller at a time, so there a second reader would only queue.
        concurrent = (
            self.info["path"] == "cpu"
            and self.read == "direct"
            and self.order == "random"
            and all(fs.direct.page_reads and fs.direct.direct_fd() is not None for fs in self.sets.values())
        )
        yield from prefetched(chunks, make.assemble, make.finish, self.prefetch + 1, concurrent)

    def _auto_read(self) -> AutoRead | None:
        """For an mmap choice resting on cached pages, an :class:`AutoRead` the epoch's readers ask."""
        if not (self._read_again and self.read == "mmap" and self.info["path"] in ("cpu", "pinned")):
            return None
        return AutoRead(self.sets.values(), self._read_choice, self._read_turned)

    def _assembler(self, chunks: list[np.ndarray] | None = None):
        path = self.info["path"]
        spec = BatchSpec(
            self.sets,
            self.batch_size,
            self.prefetch,
            self.labels,
            self.device,
            self.single,
            self.read,
            self.block_rows,
            self.window_blocks,
            chunks,
            self._auto_read(),
        )
        if path in ("device", "uva"):
            if self._assembler_cache is None:
                self._assembler_cache = (DeviceCacheAssembler if path == "device" else UvaAssembler)(spec)
            return self._assembler_cache
        if path == "pinned":
            return PinnedAssembler(spec)
        cpu = CpuAssembler(spec, self._cpu_buffers)
        self._cpu_buffers = cpu.buffers  # the next epoch writes into the same (already faulted-in) memory
        return cpu
