"""Encoders: the :class:`Encoder` base class that encoder plugins subclass, the tokens a forward pass
returns, pooling, and the registry of encoders that plugins register.

>>> from featstore.encoders import Encoder, LayerTokens, pool, get_encoders
"""

from .base import POOLINGS, WEIGHT_FILE_PATTERNS, Encoder, LayerTokens, pool, weights_sha256
from .registry import EncoderEntry, build_encoder, find_encoder, get_encoders

__all__ = [
    "POOLINGS",
    "WEIGHT_FILE_PATTERNS",
    "Encoder",
    "EncoderEntry",
    "LayerTokens",
    "build_encoder",
    "find_encoder",
    "get_encoders",
    "pool",
    "weights_sha256",
]
