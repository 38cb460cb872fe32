"""featstore's plugin manager: built-in and third-party plugins, loaded lazily and once.

It is generic: it knows the hooks (featstore.hookspecs) but no registry. Each registry calls its own
hook through :func:`collect` (encoders: featstore.encoders.get_encoders; dataset importers:
featstore.spatial.importers.get_importers).

- Built-in plugins are modules inside featstore, registered by module path exactly as third-party
  plugins are (:data:`BUILTIN_PLUGINS`).
- Third-party plugins are the entry points of the group ``featstore``. ``FEATSTORE_LOAD_PLUGINS``
  chooses them: unset loads all; a comma-separated list loads only those (entry-point or distribution
  names); an empty string loads none.
- A plugin that fails to import, to register, or whose hook raises becomes a :class:`PluginWarning`
  naming it; featstore keeps working without it.

Nothing here imports optional dependencies: the built-ins import ``datasets`` only when they run.
"""

from __future__ import annotations

import importlib
import os
import re
import threading
import warnings
from collections.abc import Callable
from importlib import metadata
from typing import Any

import pluggy

from . import hookspecs

ENTRY_POINT_GROUP = "featstore"
ENV_VAR = "FEATSTORE_LOAD_PLUGINS"
BUILTIN_PLUGINS: tuple[str, ...] = (
    "featstore.spatial.importers",
    "featstore_encoders.dinov2",
    "featstore_encoders.clip",
    "featstore_encoders.qwen",
)

_pm: pluggy.PluginManager | None = None
_lock = threading.RLock()


class PluginWarning(UserWarning):
    """A plugin could not be loaded or its hook failed; it was skipped."""


def get_plugin_manager() -> pluggy.PluginManager:
    """The one plugin manager, with built-in and selected third-party plugins registered (once)."""
    global _pm
    with _lock:
        if _pm is None:
            pm = pluggy.PluginManager(ENTRY_POINT_GROUP)
            pm.add_hookspecs(hookspecs)
            for module_path in BUILTIN_PLUGINS:
                _register_builtin(pm, module_path)
            _load_third_party(pm)
            _pm = pm
        return _pm


def _register_builtin(pm: pluggy.PluginManager, module_path: str) -> None:
    try:
        pm.register(importlib.import_module(module_path), module_path)
    except Exception as exc:  # e.g. a partial install without featstore_encoders: featstore still works
        warnings.warn(
            f"built-in featstore plugin {module_path!r} failed to load and was skipped: {exc!r}; reinstall featstore",
            PluginWarning,
            stacklevel=4,
        )


def reset_plugins() -> None:
    """Forget the plugin manager; the next use loads plugins again (for tests, or after installs)."""
    global _pm
    with _lock:
        _pm = None


def _load_third_party(pm: pluggy.PluginManager) -> None:
    selected = os.environ.get(ENV_VAR)
    if selected is not None and not selected.strip():
        return
    try:
        eps = list(metadata.entry_points(group=ENTRY_POINT_GROUP))
    except Exception as exc:  # a broken installed distribution must not stop featstore
        warnings.warn(
            f"could not list featstore plugins ({exc!r}); third-party plugins are not loaded",
            PluginWarning,
            stacklevel=3,
        )
        return
    if selected is not None:
        wanted = {_norm(s) for s in selected.split(",") if s.strip()}
        found = {_norm(ep.name) for ep in eps} | {_norm(_dist_name(ep)) for ep in eps}
        for name in sorted(wanted - found):
            warnings.warn(
                f"{ENV_VAR} names plugin {name!r}, but no installed distribution provides a "
                f"{ENTRY_POINT_GROUP!r} entry point by that name",
                PluginWarning,
                stacklevel=3,
            )
        eps = [ep for ep in eps if _norm(ep.name) in wanted or _norm(_dist_name(ep)) in wanted]
    for name in dict.fromkeys(ep.name for ep in eps):
        try:
            pm.load_setuptools_entrypoints(ENTRY_POINT_GROUP, name=name)
        except Exception as exc:
            dists = ", ".join(sorted({_dist_name(ep) for ep in eps if ep.name == name}))
            warnings.warn(
                f"featstore plugin {name!r} (from {dists}) failed to load and was skipped: {exc!r}; "
                f"fix or uninstall it, or leave it out with {ENV_VAR}",
                PluginWarning,
                stacklevel=3,
            )


def _dist_name(ep) -> str:
    dist = getattr(ep, "dist", None)
    return getattr(dist, "name", None) or "an unknown distribution"


def _norm(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name.strip()).lower()


def plugin_names() -> list[str]:
    """Names of the registered plugins (built-in module paths and entry-point names)."""
    pm = get_plugin_manager()
    # get_name() is None only for unregistered objects, and get_plugins() lists registered ones
    return [name for p in pm.get_plugins() if (name := pm.get_name(p)) is not None]


def _name_first(name: Any, obj: Any = None, **kwargs) -> tuple[Any, Any, dict[str, Any]]:
    return name, obj, kwargs


def collect(
    hook_name: str,
    make: Callable[..., Any],
    kind: str,
    unpack: Callable[..., tuple[Any, Any, dict[str, Any]]] = _name_first,
) -> dict[str, Any]:
    """Call register-callback hook ``hook_name`` plugin by plugin; ``register(name, obj, **kw)`` stores
    ``make(name, obj, plugin=..., **kw)``. A failing plugin or a duplicate name warns and is skipped.

    ``unpack(*args, **kwargs) -> (name, obj, kw)`` maps a hook's own ``register`` arguments onto that
    form (e.g. ``register(encoder, aliases=...)`` takes the name from ``encoder.name``)."""
    pm = get_plugin_manager()
    found: dict[str, Any] = {}
    owners: dict[str, str] = {}
    for impl in getattr(pm.hook, hook_name).get_hookimpls():  # registration order: built-ins first
        if impl.hookwrapper or impl.wrapper:
            continue
        plugin = impl.plugin_name
        staged: dict[str, Any] = {}

        def register(*args: Any, _plugin: str = plugin, _staged: dict = staged, **kwargs) -> None:
            name, obj, kwargs = unpack(*args, **kwargs)
            if not isinstance(name, str) or not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]*", name):
                raise ValueError(f"{kind} name {name!r} must be letters, digits, '-', '_' or '.'")
            if name in owners or name in _staged:
                warnings.warn(
                    f"{kind} {name!r} from plugin {_plugin!r} ignored: {owners.get(name, _plugin)!r} "
                    "registered that name first; choose another name",
                    PluginWarning,
                    stacklevel=2,
                )
                return
            _staged[name] = make(name, obj, plugin=_plugin, **kwargs)

        try:
            impl.function(*[{"register": register}[a] for a in impl.argnames])
        except Exception as exc:
            warnings.warn(
                f"featstore plugin {plugin!r} failed in {hook_name} and was skipped: {exc!r}",
                PluginWarning,
                stacklevel=2,
            )
            continue
        for name, value in staged.items():
            found[name] = value
            owners[name] = plugin
    return found


_REGISTRIES = {"get_importers": "featstore.spatial.importers", "get_encoders": "featstore.encoders"}


def __getattr__(name: str) -> Any:
    """``get_importers`` and ``get_encoders`` moved to their registries; kept here as deprecated aliases."""
    if name in _REGISTRIES:
        warnings.warn(f"featstore.plugins.{name} moved to {_REGISTRIES[name]}.{name}", DeprecationWarning, stacklevel=2)
        return getattr(importlib.import_module(_REGISTRIES[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
