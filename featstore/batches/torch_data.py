"""A map-style torch Dataset over feature sets, with batched ``__getitems__`` for DataLoader.

torch's DataLoader calls ``__getitems__(indices)`` with a whole batch, so one compiled gather per
feature set serves it. With the default collate the rows are then stacked (one more copy, done in
C++); with ``collate_fn=featstore.collate`` the gathered tensors are passed on as they are.
Worker processes (fork or spawn) reopen the files themselves: nothing mapped is ever pickled.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torch.utils.data import Dataset, default_collate, get_worker_info

from ..indexing import normalize_rows
from ..store import FeatureSet
from ..store.memory import AutoRead, choose_read_for


class FeatureDataset(Dataset):
    """Row i is ``(features, label)`` (or just ``features`` without labels); features are a tensor,
    or a dict key -> tensor when the dataset spans several feature sets. ``read``: "auto" (default),
    "mmap" or "direct", as for :meth:`featstore.FeatureSet.gather`, decided for all the sets; an auto
    choice of mmap that rests on cached pages is made again about once a second in each process
    (:class:`featstore.store.memory.AutoRead`), so reads turn direct soon after the pages go."""

    def __init__(self, sets: list[FeatureSet], labels: bool = True, read: str = "auto"):
        if not sets:
            raise ValueError("a FeatureDataset needs at least one feature set")
        n = len(sets[0])
        for fs in sets:
            if len(fs) != n:
                raise ValueError(f"feature sets {sets[0].key!r} and {fs.key!r} have different numbers of rows")
            fs.check_all_committed()
        self.sets = list(sets)
        self.with_labels = labels and any(fs.labels is not None for fs in sets)
        self._label_set = next((fs for fs in sets if fs.labels is not None), None)
        self.read_choice = choose_read_for(read, sets)
        self.read = self.read_choice.path
        self._auto: AutoRead | None = None  # made in each process that reads, never pickled

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_auto": None}

    def _read_now(self) -> str:
        """The path to read with: ``read``, asked again where it rests on cached pages (AutoRead)."""
        if self.read_choice.fragile or self._auto is not None:
            if self._auto is None:
                self._auto = AutoRead(self.sets, self.read_choice)
            self.read = self._auto.path()
            self.read_choice = self._auto.choice
        return self.read

    def __len__(self) -> int:
        return len(self.sets[0])

    def __getitem__(self, index: int):
        rows, _ = normalize_rows(index, len(self))
        return GatheredBatch(*self._gather_batch(rows))[0]

    def __getitems__(self, indices) -> GatheredBatch:
        rows, _ = normalize_rows(np.asarray(indices, dtype=np.int64), len(self))
        return GatheredBatch(*self._gather_batch(rows))

    def _gather_batch(self, rows: np.ndarray):
        # In a DataLoader worker the workers themselves are the parallelism: copy on this thread,
        # as torch sets its own intra-op threads to 1 there.
        threads = 1 if get_worker_info() is not None else 0
        feats = {}
        read = self._read_now()
        for fs in self.sets:
            out = torch.empty((len(rows), *fs.row_shape), dtype=fs.dtype)
            fs.gather_into(rows, out, threads, read=read)
            feats[fs.key] = out
        features = next(iter(feats.values())) if len(self.sets) == 1 else feats
        label_set = self._label_set if self.with_labels else None
        all_labels = label_set.labels if label_set is not None else None
        labels = all_labels[torch.from_numpy(rows)] if all_labels is not None else None
        return features, labels


class GatheredBatch(Sequence):
    """A batch gathered in one call that still looks like a list of rows to ``default_collate``.

    ``featstore.collate`` returns ``batch.features, batch.labels`` directly instead.
    """

    def __init__(self, features, labels):
        self.features = features
        self.labels = labels

    def __len__(self) -> int:
        first = self.features if isinstance(self.features, torch.Tensor) else next(iter(self.features.values()))
        return first.shape[0]

    def __getitem__(self, i):
        if isinstance(i, slice):
            return [self[j] for j in range(*i.indices(len(self)))]
        row: torch.Tensor | dict[str, torch.Tensor]
        if isinstance(self.features, torch.Tensor):
            row = self.features[i]
        else:
            row = {k: v[i] for k, v in self.features.items()}
        return (row, self.labels[i]) if self.labels is not None else row

    def as_batch(self):
        return (self.features, self.labels) if self.labels is not None else self.features


def collate(batch):
    """A DataLoader ``collate_fn`` that passes featstore's gathered batches through without a copy."""
    if isinstance(batch, GatheredBatch):
        return batch.as_batch()
    return default_collate(batch)
