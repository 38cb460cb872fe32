"""featstore: per-layer features of vision encoders on disk, served to probe training at memory speed.

>>> import featstore
>>> store = featstore.FeatureStore.open("datasets/features")      # doctest: +SKIP
>>> for x, y, rows in store["dinov2/layer_10"].batches(1024):     # doctest: +SKIP
...     ...

The package is layered, arrows pointing down (CI checks it with import-linter):
``cli`` -> ``demo`` -> ``extraction`` | ``probe`` -> ``spatial`` | ``encoders`` -> ``batches`` -> ``store``
-> the shared base here (errors, dtypes, indexing, distributed, hookspecs, plugins, the compiled core).
This module is the public face: it re-exports what users need from the layers below.
"""

from . import _backend, _moved
from .batches import Batch, BatchLoader, FeatureDataset, FeatureSet, FeatureStore, GatheredBatch, collate
from .errors import (
    CorruptFileError,
    CudaUnavailableError,
    DistributedError,
    EncoderError,
    ExtractionError,
    ExtractionInterrupted,
    FeatureStoreError,
    FormatError,
    FormatVersionError,
    IncompleteFeatureSetError,
    MissingKeyError,
    ModelLoadError,
    UnknownEncoderError,
    UnknownLayerError,
    VerificationError,
    WriterBusyError,
    WriterConflictError,
)
from .store import FORMAT_VERSION, FeatureWriter, Manifest

__version__ = "0.1.0"


def extract(dataset, encoder: str, model: str, out="datasets/features", **options):
    """Extract encoder features of a spatial dataset into a store; see :func:`featstore.extraction.extract`
    for every option. Imports the encoder machinery (and ``datasets``) only when called."""
    from .extraction import extract as run_extraction

    return run_extraction(dataset, encoder, model, out, **options)


def train_probes(store, dataset, keys="*", task: str = "relation", **options):
    """Train linear probes on a store's feature sets; see :func:`featstore.probe.train_probes` for every
    option. Imports the dataset machinery only when called. (Not named ``probe``: that is the module.)"""
    from .probe import train_probes as run_probes

    return run_probes(store, dataset, keys, task, **options)


def set_num_threads(n: int) -> None:
    """Threads the compiled gather uses (default: min(8, CPUs), or FEATSTORE_NUM_THREADS)."""
    _backend.set_num_threads(n)


def get_num_threads() -> int:
    """Threads the compiled gather uses."""
    return _backend.get_num_threads()


def backend() -> str:
    """'core' when the compiled module is in use, 'numpy' for the pure-numpy fallback."""
    return _backend.name()


__all__ = [
    "FORMAT_VERSION",
    "Batch",
    "BatchLoader",
    "CorruptFileError",
    "CudaUnavailableError",
    "DistributedError",
    "EncoderError",
    "ExtractionError",
    "ExtractionInterrupted",
    "FeatureDataset",
    "FeatureSet",
    "FeatureStore",
    "FeatureStoreError",
    "FeatureWriter",
    "FormatError",
    "FormatVersionError",
    "GatheredBatch",
    "IncompleteFeatureSetError",
    "Manifest",
    "MissingKeyError",
    "ModelLoadError",
    "UnknownEncoderError",
    "UnknownLayerError",
    "VerificationError",
    "WriterBusyError",
    "WriterConflictError",
    "backend",
    "collate",
    "extract",
    "get_num_threads",
    "set_num_threads",
    "train_probes",
]


def __getattr__(name: str):
    """``featstore.<old module name>`` for modules that moved into subpackages (see featstore._moved)."""
    full = f"{__name__}.{name}"
    if full in _moved.MOVED:
        return _moved.resolve(full)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


_moved.install()
