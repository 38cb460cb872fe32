"""Spatial-relation datasets: the schema, validation, loading and saving, the split by image, the
join back to feature sets, the synthetic generator (:mod:`featstore.spatial.synth`) and importers
(:mod:`featstore.spatial.importers`).

A spatial dataset is a HuggingFace ``datasets.Dataset`` with one row per (image, claim); see
:mod:`featstore.spatial.schema` for the columns and the meaning of ``label``. ``datasets`` is imported
inside functions only: ``import featstore`` and the plugin manager work on machines without it.
"""

from .io import load_dataset, load_from_disk, prepare_output_folder, quiet_datasets, save_to_disk
from .join import RowTargets, row_targets, with_features
from .schema import (
    FEATURES_COLUMN,
    INFO_KEY,
    LABEL_MEANING,
    OPPOSITE,
    OTHER_RELATIONS,
    RELATION_SYNONYMS,
    RELATIONS,
    REQUIRED_COLUMNS,
    ROW_INDEX_COLUMN,
    SCHEMA_VERSION,
    DatasetAlignmentError,
    DatasetImportError,
    DatasetValidationError,
    Problem,
    SpatialDatasetError,
    check_is_dataset,
    column_values,
    dataset_meta,
    dataset_relations,
    dataset_root,
    image_paths,
    make_info,
    normalize_relation,
    resolve_image_path,
    schema_features,
)
from .split import SPLITS, split, split_indices
from .validate import validate

__all__ = [
    "FEATURES_COLUMN",
    "INFO_KEY",
    "LABEL_MEANING",
    "OPPOSITE",
    "OTHER_RELATIONS",
    "RELATIONS",
    "RELATION_SYNONYMS",
    "REQUIRED_COLUMNS",
    "ROW_INDEX_COLUMN",
    "SCHEMA_VERSION",
    "SPLITS",
    "DatasetAlignmentError",
    "DatasetImportError",
    "DatasetValidationError",
    "Problem",
    "RowTargets",
    "SpatialDatasetError",
    "check_is_dataset",
    "column_values",
    "dataset_meta",
    "dataset_relations",
    "dataset_root",
    "image_paths",
    "load_dataset",
    "load_from_disk",
    "make_info",
    "normalize_relation",
    "prepare_output_folder",
    "quiet_datasets",
    "resolve_image_path",
    "row_targets",
    "save_to_disk",
    "schema_features",
    "split",
    "split_indices",
    "validate",
    "with_features",
]
