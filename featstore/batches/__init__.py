"""The batches layer: epochs of batches for training loops, on the CPU or a CUDA device, and a torch
Dataset. It reads through the store layer and never writes.
"""

from .assemblers import Batch
from .loader import BatchLoader
from .readers import FeatureSet, FeatureStore
from .torch_data import FeatureDataset, GatheredBatch, collate

__all__ = ["Batch", "BatchLoader", "FeatureDataset", "FeatureSet", "FeatureStore", "GatheredBatch", "collate"]
