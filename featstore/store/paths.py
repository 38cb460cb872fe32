"""Names inside a store root: feature-set keys, the files they live in, and paths that must never
leave the root (a manifest is untrusted input)."""

from __future__ import annotations

import re
from pathlib import Path

from ..errors import FormatError

_KEY_SEGMENT = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.+=-]*$")


def check_key(key: str) -> str:
    """A feature-set key is a relative path of safe segments such as 'dinov2/layer_10' or 'clip/last_layer/cls'."""
    if not isinstance(key, str) or not key:
        raise ValueError(f"a feature-set key must be a non-empty string, got {key!r}")
    segments = key.split("/")
    for segment in segments:
        if segment in ("", ".", "..") or not _KEY_SEGMENT.match(segment):
            raise ValueError(
                f"invalid feature-set key {key!r}: use '/'-separated segments of letters, digits, '_', '-', '.', "
                "e.g. 'dinov2/layer_10'"
            )
    return key


def file_for_key(key: str) -> str:
    """The file a feature set is stored in, relative to the store root."""
    return check_key(key) + ".safetensors"


def check_member_path(rel: str, where: str) -> str:
    """A manifest path must stay inside the store root: relative, no '..', no absolute path."""
    p = Path(rel)
    if not rel or p.is_absolute() or rel.startswith(("/", "\\")) or ".." in p.parts or "\\" in rel:
        raise FormatError(f"{where}: path {rel!r} leaves the store root; manifest paths must be relative and inside it")
    return rel


def resolve_member(root: Path, rel: str, where: str) -> Path:
    """The absolute path of a store member, refusing symlinks that lead out of the root."""
    check_member_path(rel, where)
    try:
        real_root = root.resolve()
        target = (root / rel).resolve()
    except (RuntimeError, OSError) as exc:  # a symlink loop, or a path too long to resolve
        raise FormatError(f"{where}: path {rel!r} cannot be resolved inside the store root ({exc})") from None
    if real_root != target and real_root not in target.parents:
        raise FormatError(f"{where}: {rel!r} resolves to {target}, outside the store root {real_root} (a symlink?)")
    return target
