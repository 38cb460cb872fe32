"""The exceptions featstore raises: one hierarchy, each message names the file or key and says what to do."""

from __future__ import annotations


class FeatureStoreError(Exception):
    """Base class of every error featstore raises on purpose."""


class FormatError(FeatureStoreError):
    """A file or manifest does not follow the on-disk contract (malformed, inconsistent, unsafe path)."""


class CorruptFileError(FormatError):
    """A file's bytes are damaged: truncated, unparsable header, checksum mismatch."""


class FormatVersionError(FormatError):
    """The manifest was written by a newer featstore whose format this version cannot read."""


class MissingKeyError(FeatureStoreError, KeyError):
    """No feature set with the requested key exists in the store."""

    def __str__(self) -> str:  # KeyError would repr() the message
        return str(self.args[0]) if self.args else ""


class IncompleteFeatureSetError(FeatureStoreError):
    """The feature set has rows that were never committed; resume its writer or open it with allow_incomplete=True."""


class WriterConflictError(FeatureStoreError):
    """Another writer holds the feature set, or the requested write would change committed rows."""


class WriterBusyError(WriterConflictError):
    """Another process holds the feature set's writer lock right now (wait for it, or stop it, then resume)."""


class VerificationError(FeatureStoreError):
    """store.verify() found data that does not match its recorded checksums."""

    def __init__(self, message: str, problems: list[str]):
        super().__init__(message)
        self.problems = problems


class EncoderError(FeatureStoreError):
    """An encoder cannot be found, built or loaded, or was asked for something it does not offer."""


class UnknownEncoderError(EncoderError, KeyError):
    """No registered encoder has the requested name; the message lists the known ones."""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else ""


class UnknownLayerError(EncoderError, ValueError):
    """A requested layer or pooling is not offered by the encoder; the message lists what is."""


class ModelLoadError(EncoderError):
    """Model weights or configuration could not be loaded, or loaded incompletely."""


class ExtractionError(FeatureStoreError):
    """An extraction cannot start (bad input: a missing image, column or split) or cannot go on
    (an unreadable image, existing feature sets written with other settings)."""


class CudaUnavailableError(FeatureStoreError, RuntimeError):
    """A CUDA path was asked for where it cannot run: no CUDA GPU, or featstore._cuda not built, or
    host registration refused; the message says which and what to do instead."""


class DistributedError(FeatureStoreError):
    """Another rank of a torch.distributed job failed a step every rank depends on."""


class ExtractionInterrupted(KeyboardInterrupt):
    """Ctrl-C (SIGINT) stopped an extraction after its writers committed what they had; the message
    says how many rows are committed and that running the same extraction again resumes. A
    KeyboardInterrupt, so code that catches those still does."""
