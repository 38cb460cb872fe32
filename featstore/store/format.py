"""The on-disk contract in one import: the safetensors header, the manifest and its entries, the paths
and row ranges they use. The pieces live in header, record, manifest, paths and ranges; see the
format specification in docs/format.md.
"""

from __future__ import annotations

from .files import fsync_dir, open_regular_file, write_json_atomic
from .header import (
    ALIGNMENT,
    DTYPES,
    FEATURES,
    FILE_FORMAT_VERSION,
    LABELS,
    LABELS_DTYPE,
    MAX_HEADER_BYTES,
    MAX_TENSOR_BYTES,
    SAFETENSORS_CODES,
    Header,
    Layout,
    TensorEntry,
    check_dtype,
    encode_header,
    itemsize,
    parse_header,
    read_header,
    shape_nbytes,
)
from .manifest import (
    FORMAT_NAME,
    FORMAT_VERSION,
    LOCK_NAME,
    MANIFEST_NAME,
    Manifest,
    empty_manifest,
    parse_manifest,
    read_manifest,
)
from .paths import check_key, check_member_path, file_for_key, resolve_member
from .ranges import covers, gaps, merge_ranges, overlaps, subtract_ranges
from .record import FeatureSetRecord

__all__ = [
    "ALIGNMENT",
    "DTYPES",
    "FEATURES",
    "FILE_FORMAT_VERSION",
    "FORMAT_NAME",
    "FORMAT_VERSION",
    "LABELS",
    "LABELS_DTYPE",
    "LOCK_NAME",
    "MANIFEST_NAME",
    "MAX_HEADER_BYTES",
    "MAX_TENSOR_BYTES",
    "SAFETENSORS_CODES",
    "FeatureSetRecord",
    "Header",
    "Layout",
    "Manifest",
    "TensorEntry",
    "check_dtype",
    "check_key",
    "check_member_path",
    "covers",
    "empty_manifest",
    "encode_header",
    "file_for_key",
    "fsync_dir",
    "gaps",
    "itemsize",
    "merge_ranges",
    "open_regular_file",
    "overlaps",
    "parse_header",
    "parse_manifest",
    "read_header",
    "read_manifest",
    "resolve_member",
    "shape_nbytes",
    "subtract_ranges",
    "write_json_atomic",
]
