"""The store and set that ``featstore.FeatureStore.open`` returns: the store layer's classes plus
``batches()`` and ``dataset()``.

The store layer knows nothing of loaders (arrows point down), so the conveniences that build one
are added here, one layer up, by subclassing. ``featstore.FeatureStore`` is this class; code that
only stores and reads rows may use ``featstore.store.FeatureStore``.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, cast

from .. import store
from .loader import BatchLoader
from .torch_data import FeatureDataset


class FeatureSet(store.FeatureSet):
    __doc__ = store.FeatureSet.__doc__

    def batches(self, batch_size: int, **options: Any) -> BatchLoader:
        """Batches of this set (and its labels); see :class:`featstore.BatchLoader` for the options."""
        return BatchLoader({self.key: self}, batch_size, **options)

    def dataset(self, labels: bool = True, read: str = "auto") -> FeatureDataset:
        """A map-style torch Dataset over this set; see :class:`featstore.FeatureDataset`."""
        return FeatureDataset([self], labels=labels, read=read)


class FeatureStore(store.FeatureStore):
    __doc__ = store.FeatureStore.__doc__
    feature_set_type = FeatureSet

    def get(self, key: str, allow_incomplete: bool = False) -> FeatureSet:
        return cast(FeatureSet, super().get(key, allow_incomplete))

    def __getitem__(self, key: str) -> FeatureSet:
        return self.get(key)

    def batches(self, keys: str | Iterable[str], batch_size: int, **options: Any) -> BatchLoader:
        """The same rows of several feature sets per batch (e.g. layers 10, 15 and 23), with labels;
        see :class:`featstore.BatchLoader` for the options."""
        keys = [keys] if isinstance(keys, str) else list(keys)
        return BatchLoader({k: self[k] for k in keys}, batch_size, **options)

    def dataset(self, keys: str | Iterable[str], labels: bool = True, read: str = "auto") -> FeatureDataset:
        """A map-style torch Dataset over one or several feature sets (``read``: see :class:`featstore.FeatureDataset`)."""
        keys = [keys] if isinstance(keys, str) else list(keys)
        return FeatureDataset([self[k] for k in keys], labels=labels, read=read)
