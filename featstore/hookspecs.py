"""The hooks a featstore plugin can implement (pluggy project name ``featstore``).

A plugin is a module (or object) with functions marked ``@hookimpl``, registered under the
entry-point group ``featstore``::

    # pyproject.toml of a plugin distribution
    [project.entry-points.featstore]
    my_plugin = "my_package.featstore_plugin"

featstore's own built-ins are written the same way (see ``featstore/plugins.py``). Every hook is a
*register callback*: featstore calls it with a ``register`` function and the plugin calls
``register`` once per thing it provides. Hooks return nothing.
"""

from __future__ import annotations

from collections.abc import Callable

from pluggy import HookimplMarker, HookspecMarker

hookspec = HookspecMarker("featstore")
hookimpl = HookimplMarker("featstore")


@hookspec
def register_importers(register: Callable[..., None]) -> None:
    """Register dataset importers, used as ``featstore dataset import NAME SOURCE --out DIR [options]``
    and from Python as ``featstore.spatial.importers.get_importers()[NAME](SOURCE, **options)``.

    Arguments:
        register: call ``register(name, importer, help="one line")`` once per importer.
            ``name`` is the command-line name (letters, digits, ``-``, ``_``; unique across plugins:
            a clash keeps the first registered and warns). ``importer`` is either a callable
            ``importer(source: str, **options) -> datasets.Dataset | featstore.spatial.importers.ImportResult``
            or an object with such a ``__call__`` and an optional ``add_arguments(parser)`` method that
            adds its options to an ``argparse.ArgumentParser``; parsed options are passed as keywords
            (``--skip-bad`` arrives as ``skip_bad=...``). The dataset must follow the spatial schema
            (``featstore.spatial``); image paths should be absolute. It is validated before it is saved.

    Returns:
        None: the hook returns nothing. An exception raised in it becomes a warning naming the
            plugin, and its importers are left out.

    Example:
        ```python
        from featstore.hookspecs import hookimpl

        def import_mycsv(source, skip_bad=False):
            \"\"\"Import my lab's CSV files.\"\"\"
            ...                                   # build and return a datasets.Dataset

        import_mycsv.add_arguments = lambda parser: parser.add_argument("--skip-bad", action="store_true")

        @hookimpl
        def register_importers(register):
            register("mycsv", import_mycsv, help="my lab's CSV files")
        ```
    """


@hookspec
def register_encoders(register: Callable[..., None]) -> None:
    """Register vision encoders, used as ``featstore extract --encoder NAME`` and from Python as
    ``featstore.encoders.get_encoders()[NAME]``.

    Arguments:
        register: call ``register(encoder, aliases=())`` once per encoder. ``encoder`` is a subclass
            of :class:`featstore.encoders.Encoder` (the class, not an instance: featstore builds it
            with ``encoder(model_id_or_folder, device=..., dtype=...)`` when an extraction runs, so
            registering loads no model). It is registered under its ``name`` attribute (letters,
            digits, ``-``, ``_``, ``.``; unique across plugins: a clash keeps the first registered and
            warns). ``aliases`` are further names for the same encoder (e.g. ``"qwen2.5-vl"``).

    Returns:
        None: the hook returns nothing. An exception raised in it becomes a warning naming the
            plugin, and its encoders are left out.

    Example:
        ```python
        from featstore.encoders import Encoder
        from featstore.hookspecs import hookimpl

        class MyEncoder(Encoder):
            name = "myvit"
            ...  # list_layers(), load_config(), load_model(), load_processor(), encode(): see Encoder

        @hookimpl
        def register_encoders(register):
            register(MyEncoder, aliases=["my-vit"])
        ```
    """
