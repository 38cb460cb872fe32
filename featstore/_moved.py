"""Module paths from before featstore was split into subpackages, kept importable as aliases.

``import featstore.spatial_synth`` (and ``from featstore import spatial_synth``) still work and give
the module now at :mod:`featstore.spatial.synth`, with a DeprecationWarning naming the new path.
The alias is the very same module object, so state and ``isinstance`` checks are shared. The new
module is imported by name only when an old path is used, so no layer imports another through here.
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.machinery
import sys
import warnings
from types import ModuleType

MOVED: dict[str, str] = {
    "featstore.format": "featstore.store.format",
    "featstore.writer": "featstore.store.writer",
    "featstore.shards": "featstore.store.shards",
    "featstore.verify": "featstore.store.verify",
    "featstore.pt_io": "featstore.store.pt_io",
    "featstore._crashpoints": "featstore.store.crashpoints",
    "featstore.loader": "featstore.batches.loader",
    "featstore.device_batches": "featstore.batches.device_assemblers",
    "featstore.device_paths": "featstore.batches.device_paths",
    "featstore.cuda": "featstore.batches.cuda",
    "featstore.torch_data": "featstore.batches.torch_data",
    "featstore.spatial_join": "featstore.spatial.join",
    "featstore.spatial_split": "featstore.spatial.split",
    "featstore.spatial_synth": "featstore.spatial.synth",
    "featstore.importers": "featstore.spatial.importers",
    "featstore.import_table": "featstore.spatial.importers.table",
    "featstore.import_whatsup": "featstore.spatial.importers.whatsup",
    "featstore.extraction_ranks": "featstore.extraction.ranks",
    "featstore.probe_report": "featstore.probe.report",
    "featstore.dataset_cli": "featstore.cli.dataset",
    "featstore.extract_cli": "featstore.cli.extract",
    "featstore.probe_cli": "featstore.cli.probe",
    "featstore.tiny_models": "featstore.demo.tiny_models",
}


def resolve(old: str) -> ModuleType:
    """The module now at ``MOVED[old]``, imported, after a DeprecationWarning naming the new path."""
    new = MOVED[old]
    warnings.warn(f"{old} moved to {new}; import it from there", DeprecationWarning, stacklevel=3)
    return importlib.import_module(new)


class _AliasLoader(importlib.abc.Loader):
    """Hands out the already-imported new module instead of making a module for the old name."""

    def __init__(self, old: str):
        self.old = old
        self.spec: importlib.machinery.ModuleSpec | None = None

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> ModuleType:
        module = resolve(self.old)
        self.spec = module.__spec__  # the import system sets the alias's spec on it next; put it back in exec
        return module

    def exec_module(self, module: ModuleType) -> None:
        module.__spec__ = self.spec
        sys.modules[self.old] = module


class AliasFinder(importlib.abc.MetaPathFinder):
    """Finds the old module paths of :data:`MOVED` (and nothing else)."""

    def find_spec(self, fullname: str, path=None, target=None) -> importlib.machinery.ModuleSpec | None:
        if fullname not in MOVED:
            return None
        return importlib.machinery.ModuleSpec(fullname, _AliasLoader(fullname))


def install() -> None:
    """Put the finder on ``sys.meta_path`` once."""
    if not any(isinstance(f, AliasFinder) for f in sys.meta_path):
        sys.meta_path.append(AliasFinder())
