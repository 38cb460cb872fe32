"""Extraction: a registered encoder run over a spatial dataset, every requested layer and pooling of
one forward pass written as a feature set (see :func:`extract`). Under torchrun the ranks split the
images (featstore.extraction.ranks)."""

from ..errors import ExtractionError
from .plan import ExtractResult, Plan, feature_keys, plan_extraction
from .run import DEFAULT_COMMIT_EVERY, extract

__all__ = [
    "DEFAULT_COMMIT_EVERY",
    "ExtractResult",
    "ExtractionError",
    "Plan",
    "extract",
    "feature_keys",
    "plan_extraction",
]
