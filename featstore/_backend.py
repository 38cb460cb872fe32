"""Selects the gather/mmap/direct-read implementation: the compiled featstore._core, or the numpy fallback.

Call through the module, e.g. ``_backend.gather(...)``: ``use()`` rebinds these attributes, so
``from featstore._backend import gather`` would keep the implementation current at import time.
FEATSTORE_PUREPYTHON=1 selects numpy; so does a failed import of _core (with one warning).
"""

from __future__ import annotations

import contextlib
import importlib
import os
import warnings
from typing import TYPE_CHECKING

_NAMES = ("core", "numpy")
_MODULES = {"core": "featstore._core", "numpy": "featstore._numpy_backend"}
_API = (
    "MappedFile",
    "dequant_gather",
    "gather",
    "io_engine",
    "permute_pcg64",
    "read_rows",
    "set_num_threads",
    "get_num_threads",
)

_current = ""
if TYPE_CHECKING:
    # The numpy fallback has _core's names and signatures, and is a module below this one (a static
    # import of the compiled _core would read, to the import checkers, as one of the package itself).
    from ._numpy_backend import (
        MappedFile,
        dequant_gather,
        gather,
        get_num_threads,
        io_engine,
        permute_pcg64,
        read_rows,
        set_num_threads,
    )
else:
    # Rebound by _select(); these placeholders only exist for readers.
    MappedFile = dequant_gather = gather = io_engine = permute_pcg64 = read_rows = set_num_threads = get_num_threads = (
        None
    )


def _load(name: str):
    if name not in _MODULES:
        raise ValueError(f"unknown backend {name!r}, expected one of {', '.join(_NAMES)}")
    return importlib.import_module(_MODULES[name])


def _select(name: str) -> None:
    global _current
    mod = _load(name)
    g = globals()
    for attr in _API:
        g[attr] = getattr(mod, attr)
    _current = name


def name() -> str:
    """The current implementation: "core" or "numpy"."""
    return _current


def available() -> list[str]:
    """Names of the implementations that import."""
    out = []
    for n in _NAMES:
        try:
            _load(n)
        except ImportError:
            continue
        out.append(n)
    return out


@contextlib.contextmanager
def use(name: str):
    """Switch to implementation `name` ("core" or "numpy") inside the block (for tests; not thread-safe)."""
    previous = _current
    _select(name)
    try:
        yield
    finally:
        _select(previous)


if os.environ.get("FEATSTORE_PUREPYTHON") == "1":
    _select("numpy")
else:
    try:
        _select("core")
    except ImportError as e:
        warnings.warn(
            f"featstore: the compiled core failed to import ({e!r}); using the slower numpy fallback. "
            "Reinstall with `pip install -e .` to rebuild it.",
            RuntimeWarning,
            stacklevel=2,
        )
        _select("numpy")
