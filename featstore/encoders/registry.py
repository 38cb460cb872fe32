"""The encoder registry: every encoder that plugins register through the ``register_encoders`` hook,
found by name or alias, and built for a model.

The registry calls its own hook (featstore.plugins knows no registry); built-in encoders are plugins
like any other, in the ``featstore_encoders`` package.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from ..errors import EncoderError, UnknownEncoderError
from ..plugins import collect
from .base import Encoder


def get_encoders() -> dict[str, EncoderEntry]:
    """Every registered encoder: name -> :class:`EncoderEntry` (class, plugin, aliases).

    Aliases are not keys here; :func:`find_encoder` resolves them."""
    return dict(sorted(collect("register_encoders", EncoderEntry.make, "encoder", EncoderEntry.unpack).items()))


@dataclass(frozen=True)
class EncoderEntry:
    """A registered encoder: its class, the plugin that registered it, and its aliases."""

    name: str
    cls: type[Encoder]
    plugin: str | None = None
    aliases: tuple[str, ...] = field(default=())

    @staticmethod
    def unpack(encoder: Any = None, aliases: Iterable[str] = (), **extra) -> tuple[Any, Any, dict[str, Any]]:
        """Map ``register(encoder, aliases=...)`` onto ``(name, encoder, options)`` for plugins.collect."""
        if extra:
            raise TypeError(
                f"register() got unexpected arguments {sorted(extra)}; use register(EncoderClass, aliases=[...])"
            )
        if not (isinstance(encoder, type) and issubclass(encoder, Encoder)):
            raise TypeError(f"register() needs a subclass of featstore.encoders.Encoder, got {encoder!r}")
        if isinstance(aliases, str):
            aliases = [aliases]
        return encoder.name, encoder, {"aliases": tuple(aliases)}

    @classmethod
    def make(
        cls, name: str, obj: type[Encoder], plugin: str | None = None, aliases: tuple[str, ...] = ()
    ) -> EncoderEntry:
        """Build the entry ``plugins.collect`` stores for one ``register`` call."""
        return cls(name, obj, plugin, tuple(a for a in aliases if a != name))

    @property
    def description(self) -> str:
        """One line about the encoder: its ``description`` or the first line of its docstring."""
        if self.cls.description:
            return self.cls.description
        lines = (self.cls.__doc__ or "").strip().splitlines()
        return lines[0] if lines else ""


def find_encoder(name: str) -> EncoderEntry:
    """The registered encoder called ``name`` (or with that alias); raises UnknownEncoderError listing
    the known ones."""
    entries = get_encoders()
    if name in entries:
        return entries[name]
    for entry in entries.values():
        if name in entry.aliases:
            return entry
    known = ", ".join(f"{e.name}" + (f" ({', '.join(e.aliases)})" if e.aliases else "") for e in entries.values())
    raise UnknownEncoderError(
        f"no encoder {name!r}; known encoders: {known or 'none (no encoder plugin is loaded)'}. "
        "Install a plugin that provides it, or see `featstore encoders`"
    )


def build_encoder(name: str, model: str | os.PathLike, device: str = "cpu", dtype: str = "float32") -> Encoder:
    """Instantiate the registered encoder ``name`` for ``model``; nothing is loaded yet."""
    entry = find_encoder(name)
    try:
        return entry.cls(model, device=device, dtype=dtype)
    except EncoderError:
        raise
    except Exception as exc:
        raise EncoderError(
            f"encoder {name!r} (plugin {entry.plugin!r}) could not be built for {model!r}: {exc!r}"
        ) from exc
