"""What a dataset importer is (:class:`Importer`), what it returns (:class:`ImportResult`), the
helpers importers share, and the registry: :func:`get_importers` calls the ``register_importers``
hook of every plugin. ``datasets`` is imported only when an importer runs.
"""

from __future__ import annotations

import argparse
import inspect
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from ...errors import FeatureStoreError
from ...plugins import collect
from ..schema import DatasetImportError, Problem, make_info, schema_features


@dataclass
class ImportResult:
    """An imported dataset, the rows left out on purpose (reason -> count), the bad entries left out
    because ``skip_bad`` was set (each with its position in the source file), and other remarks."""

    dataset: Any
    skipped: dict[str, int] = field(default_factory=dict)
    problems: list[Problem] = field(default_factory=list)
    remarks: list[str] = field(default_factory=list)

    def notes(self) -> list[str]:
        """Human-readable lines about what was left out, for the command line."""
        out = [f"skipped {count} row(s): {reason}" for reason, count in self.skipped.items()]
        if self.problems:
            out.append(f"left out {len(self.problems)} problem(s) in bad entries (--skip-bad):")
            out += [f"  {p}" for p in self.problems]
        return out + list(self.remarks)


@dataclass(frozen=True)
class Importer:
    """A registered importer: ``importer(source, **options) -> ImportResult``."""

    name: str
    function: Callable[..., Any]
    help: str = ""
    plugin: str | None = None
    add_arguments: Callable[[argparse.ArgumentParser], None] | None = None

    @classmethod
    def make(cls, name: str, obj: Any, plugin: str | None = None, help: str | None = None) -> Importer:
        """Wrap what a plugin passed to ``register``: a callable, optionally with ``add_arguments``."""
        if not callable(obj):
            raise TypeError(f"importer {name!r} must be callable (source, **options), got {type(obj).__name__}")
        add = getattr(obj, "add_arguments", None)
        if add is not None and not callable(add):
            raise TypeError(f"importer {name!r}: add_arguments must be a function taking an argparse parser")
        doc = (inspect.getdoc(obj) or "").strip().splitlines()
        return cls(name, obj, help if help is not None else (doc[0] if doc else ""), plugin, add)

    def __call__(self, source: str, **options) -> ImportResult:
        """Run the importer; a bare ``datasets.Dataset`` result is wrapped in an ImportResult."""
        import datasets

        try:
            result = self.function(source, **options)
        except FeatureStoreError:
            raise
        except Exception as exc:  # a bug or an unhandled input error inside the importer: name it
            raise DatasetImportError(
                f"importer {self.name!r} (plugin {self.plugin!r}) failed on {source}: {exc!r}"
            ) from exc
        if isinstance(result, datasets.Dataset):
            result = ImportResult(result)
        if not isinstance(result, ImportResult) or not isinstance(result.dataset, datasets.Dataset):
            raise DatasetImportError(
                f"importer {self.name!r} (plugin {self.plugin!r}) returned {type(result).__name__}, not a "
                "datasets.Dataset or featstore.spatial.importers.ImportResult; fix the plugin"
            )
        return result


def add_skip_bad(parser: argparse.ArgumentParser) -> None:
    """The ``--skip-bad`` option the built-in importers share."""
    parser.add_argument(
        "--skip-bad",
        action="store_true",
        help="leave out malformed entries and missing images (each is reported) instead of failing",
    )


class RowCollector:
    """Builds an import: rows in the schema's columns, problems with their file positions, skip counts."""

    def __init__(self, source: str, unit: str):
        self.source, self.unit = source, unit
        self.columns: dict[str, list] = {"image_path": [], "spatial_relation": [], "label": [], "captions": []}
        self.problems: list[Problem] = []
        self.skipped: Counter = Counter()

    def problem(self, position: int, field_name: str | None, message: str) -> Problem:
        return Problem(position, field_name, message, source=self.source, unit=self.unit)

    def add_entry(self, rows: list[tuple[str, str, int, list[str]]], problems: list[Problem]) -> None:
        """One source entry: its rows if it has no problems, else its problems (the entry is left out)."""
        if problems:
            self.problems += problems
            return
        for image_path, relation, label, captions in rows:
            self.columns["image_path"].append(image_path)
            self.columns["spatial_relation"].append(relation)
            self.columns["label"].append(int(label))
            self.columns["captions"].append(list(captions))

    def finish(self, skip_bad: bool, source_info: dict[str, Any], extra_relations=()) -> ImportResult:
        """The ImportResult, or DatasetImportError listing every problem when ``skip_bad`` is off."""
        import datasets

        positions = "0-based positions in the JSON list" if self.unit == "entry" else "1-based line numbers"
        if self.problems and not skip_bad:
            entries = len({p.row for p in self.problems})
            raise DatasetImportError(
                f"{self.source}: {len(self.problems)} problem(s) in {entries} entr{'y' if entries == 1 else 'ies'} "
                f"({positions}); fix them, or pass --skip-bad (skip_bad=True) to leave those entries out:",
                self.problems,
            )
        if not self.columns["image_path"]:
            raise DatasetImportError(
                f"{self.source}: no rows to import ({sum(self.skipped.values())} skipped on purpose, "
                f"{len(self.problems)} bad entries)",
                self.problems,
            )
        info = make_info(
            {**source_info, "skipped": dict(self.skipped), "bad_entries_skipped": len(self.problems)}, extra_relations
        )
        ds = datasets.Dataset.from_dict(self.columns, features=schema_features(), info=info)
        return ImportResult(ds, dict(self.skipped), list(self.problems))


def get_importers() -> dict[str, Importer]:
    """Every registered dataset importer: name -> :class:`Importer` (built-in and third-party)."""
    return dict(sorted(collect("register_importers", Importer.make, "importer").items()))
