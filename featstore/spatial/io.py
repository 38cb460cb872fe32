"""Loading and saving spatial datasets: clear errors for folders that hold none, relative image paths
kept valid across folders, and choosing one split."""

from __future__ import annotations

import os
import re
import shutil
from collections.abc import Iterable
from contextlib import contextmanager
from pathlib import Path

from .schema import DatasetValidationError, SpatialDatasetError, dataset_root
from .validate import validate


@contextmanager
def quiet_datasets():
    """Silence HF datasets' own progress bars inside featstore operations (they have their own)."""
    import datasets

    was_enabled = (
        (not datasets.are_progress_bars_disabled())
        if hasattr(datasets, "are_progress_bars_disabled")
        else datasets.is_progress_bar_enabled()
    )
    datasets.disable_progress_bars()
    try:
        yield
    finally:
        if was_enabled:
            datasets.enable_progress_bars()


def load_from_disk(path: str | os.PathLike, validate_rows: bool = False, check_files: bool = True):
    """``datasets.load_from_disk(path)`` with a clear error when ``path`` is not a saved dataset;
    with ``validate_rows=True`` also :func:`validate` it (a DatasetDict split by split)."""
    import datasets

    path = Path(path)
    if not path.is_dir():
        raise SpatialDatasetError(
            f"{path} is not a folder; make a dataset first, e.g. featstore dataset synth --out {path}"
        )
    if not ((path / "dataset_info.json").exists() or (path / "dataset_dict.json").exists()):
        raise SpatialDatasetError(
            f"{path} holds no saved dataset (no dataset_info.json or dataset_dict.json); "
            "pass the folder given to save_to_disk"
        )
    ds = datasets.load_from_disk(str(path))
    if validate_rows:
        for name, part in ds.items() if isinstance(ds, datasets.DatasetDict) else [(None, ds)]:
            try:
                validate(part, check_files=check_files)
            except DatasetValidationError as exc:
                where = f"{path}" + (f" split {name!r}" if name else "")
                raise DatasetValidationError(f"{where}: {len(exc.problems)} problem(s):", exc.problems) from None
    return ds


_DATASET_FILES = re.compile(
    r"^(data-\d+-of-\d+\.arrow|cache-[0-9a-f]+\.arrow|dataset_info\.json|state\.json|dataset_dict\.json)$"
)


def prepare_output_folder(path: str | os.PathLike, overwrite: bool, owned: Iterable[str] = ()) -> Path:
    """Make ``path`` ready to receive a dataset. A dataset saved there before is an error unless
    ``overwrite``; then its files (and the folders in ``owned``, e.g. the generator's ``images``) are
    removed. Files featstore did not write are never deleted."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise SpatialDatasetError(f"{path} exists and is not a folder; choose another output folder")
    if path.is_dir():
        entries = list(path.iterdir())
        ours = [e for e in entries if _DATASET_FILES.match(e.name) or _is_split_folder(e)]
        owned_here = [e for e in entries if e.name in set(owned)]
        if ours and not overwrite:
            raise SpatialDatasetError(
                f"{path} already holds a dataset; choose a new folder or pass --overwrite (overwrite=True)"
            )
        if owned_here and not ours:
            raise SpatialDatasetError(
                f"{path} holds {', '.join(e.name for e in owned_here)}/ but no dataset, so featstore "
                "did not write it; choose an empty or new folder"
            )
        if overwrite:
            for e in ours + owned_here:
                shutil.rmtree(e) if e.is_dir() else e.unlink()
    path.mkdir(parents=True, exist_ok=True)
    return path


def _is_split_folder(entry: Path) -> bool:
    return entry.is_dir() and any(entry.iterdir()) and all(_DATASET_FILES.match(f.name) for f in entry.iterdir())


def save_to_disk(ds, path: str | os.PathLike, overwrite: bool = False) -> Path:
    """``ds.save_to_disk(path)`` (a Dataset or DatasetDict) that keeps relative image paths valid: when
    ``ds`` was loaded from another folder they are rewritten relative to the new one (per split)."""
    import datasets

    path = Path(path)
    sources = [dataset_root(d) for d in (ds.values() if isinstance(ds, datasets.DatasetDict) else [ds])]
    if any(s is not None and (s == path.resolve() or path.resolve() in s.parents) for s in sources):
        raise SpatialDatasetError(
            f"cannot save a dataset into {path}, the folder it is read from (or one above it); save it to a new folder"
        )
    prepare_output_folder(path, overwrite)
    with quiet_datasets():
        if isinstance(ds, datasets.DatasetDict):
            ds = datasets.DatasetDict({name: _rebase(part, path / name) for name, part in ds.items()})
        else:
            ds = _rebase(ds, path)
        ds.save_to_disk(str(path))
    return path


def _rebase(ds, new_root: Path):
    """``ds`` with relative image paths rewritten from the folder it was loaded from to ``new_root``."""
    old_root = dataset_root(ds)
    if old_root is None or "image_path" not in ds.column_names:
        return ds
    new_root = new_root.resolve()
    if old_root == new_root:
        return ds

    def rebase(batch):
        return {
            "image_path": [
                p if not isinstance(p, str) or os.path.isabs(p) or not p else os.path.relpath(old_root / p, new_root)
                for p in batch["image_path"]
            ]
        }

    return ds.with_format(None).map(rebase, batched=True, keep_in_memory=True)


def load_dataset(dataset, split: str | None = None, error: type[Exception] = SpatialDatasetError):
    """One ``datasets.Dataset`` from a folder written by save_to_disk or a Dataset/DatasetDict in memory;
    ``split`` chooses one split of a DatasetDict. Problems raise ``error`` saying what to pass instead."""
    import datasets

    if isinstance(dataset, (str, os.PathLike)):
        with quiet_datasets():
            dataset = load_from_disk(dataset)
    if isinstance(dataset, datasets.DatasetDict):
        if split is None:
            raise error(f"the dataset has the splits {list(dataset)}; choose one with --split (split=...)")
        if split not in dataset:
            raise error(f"the dataset has no split {split!r}; it has {list(dataset)}")
        dataset = dataset[split]
    elif split is not None:
        raise error(f"split={split!r} given, but the dataset has no splits")
    if not isinstance(dataset, datasets.Dataset):
        raise error(
            f"dataset must be a folder written by save_to_disk or a datasets.Dataset, got {type(dataset).__name__}"
        )
    return dataset
