"""The store layer: the on-disk format, the manifest, reading feature sets, writing them durably.

It knows nothing of batches, encoders or datasets: layers above build on :class:`FeatureStore`,
:class:`FeatureSet`, :class:`FeatureWriter` and :class:`Manifest`.
"""

from .feature_set import FeatureSet
from .manifest import FORMAT_VERSION, Manifest
from .record import FeatureSetRecord
from .store import FeatureStore
from .writer import FeatureWriter

__all__ = ["FORMAT_VERSION", "FeatureSet", "FeatureSetRecord", "FeatureStore", "FeatureWriter", "Manifest"]
