"""Dataset importers: plugins that turn other formats into spatial datasets (hook
``register_importers``, see :mod:`featstore.hookspecs`).

This package is also featstore's built-in importer plugin (``table``: a CSV/JSONL file of the
schema's columns; ``whatsup``: the What'sUp benchmark), registered by module path exactly like a
third-party plugin. Get every importer with :func:`get_importers`.
"""

from __future__ import annotations

from ...hookspecs import hookimpl
from .base import Importer, ImportResult, RowCollector, add_skip_bad, get_importers

__all__ = ["ImportResult", "Importer", "RowCollector", "add_skip_bad", "get_importers", "register_importers"]


@hookimpl
def register_importers(register):
    """featstore's built-in importers, registered through the same hook as third-party ones."""
    from .table import import_table
    from .whatsup import import_whatsup

    register("table", import_table, help="a CSV or JSONL file of the schema's columns plus a folder of images")
    register(
        "whatsup",
        import_whatsup,
        help="the What'sUp benchmark (Kamath et al. 2023): --subset A, B, coco-one, coco-two, vg-one or vg-two",
    )
