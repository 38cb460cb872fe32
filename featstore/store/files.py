"""Reading and writing files that may be hostile or must survive a crash: regular files only, JSON
parsed with every failure named, and atomic, durable replacement."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path
from typing import Any, TypeGuard

from ..errors import CorruptFileError, FormatError


def short_repr(value: Any, limit: int = 120) -> str:
    """repr() of an untrusted value, cut to ``limit`` characters for an error message."""
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def is_nonneg_int(x: Any) -> TypeGuard[int]:
    """True for a non-negative int that is not a bool (JSON ``true`` parses as one)."""
    return isinstance(x, int) and not isinstance(x, bool) and x >= 0


def _no_duplicate_keys(path: str):
    def hook(pairs):
        obj = {}
        for k, v in pairs:
            if k in obj:
                raise CorruptFileError(f"{path}: header has the key {k!r} twice; the file is corrupt, re-create it")
            obj[k] = v
        return obj

    return hook


def load_untrusted_json(text: str, path: str, what: str) -> Any:
    """json.loads for untrusted text: every way it can fail (bad syntax, nesting too deep for the
    parser's recursion, integers too long to convert, duplicate keys) is a CorruptFileError naming ``what``."""
    try:
        return json.loads(text, object_pairs_hook=_no_duplicate_keys(path))
    except json.JSONDecodeError as exc:
        raise CorruptFileError(
            f"{path}: {what} is not valid JSON ({exc.msg} at char {exc.pos}); the file is corrupt"
        ) from None
    except RecursionError:
        raise CorruptFileError(f"{path}: {what} nests JSON arrays/objects too deeply; the file is corrupt") from None
    except ValueError as exc:  # e.g. an integer with more digits than int() converts
        raise CorruptFileError(f"{path}: {what} is not valid JSON ({str(exc)[:120]}); the file is corrupt") from None


def open_regular_file(path: str | os.PathLike, what: str):
    """Open ``path`` for binary reading only if it is a regular file (not a FIFO, device or folder,
    which could block or never end); raises FormatError naming ``what`` otherwise."""
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    try:
        mode = os.fstat(fd).st_mode
        if not stat.S_ISREG(mode):
            kind = "a folder" if stat.S_ISDIR(mode) else "not a regular file"
            raise FormatError(f"{os.fspath(path)}: {what} is {kind}")
        os.set_blocking(fd, True)
        return os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise


def fsync_dir(path: Path) -> None:
    """Make a rename or file creation in ``path`` durable."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_json_atomic(path: Path, obj: Any, crash_hook=None) -> None:
    """Replace ``path`` atomically and durably: temp file, fsync, rename, fsync of the folder.

    ``crash_hook(step)`` is called between the steps (tests use it to kill the process there).
    """
    hook = crash_hook or (lambda step: None)
    data = json.dumps(obj, indent=1, sort_keys=True).encode("utf-8") + b"\n"
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o644)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]
        hook("manifest-temp-written")
        os.fsync(fd)
    finally:
        os.close(fd)
    hook("manifest-temp-synced")
    os.replace(tmp, path)
    hook("manifest-renamed")
    fsync_dir(path.parent)
    hook("manifest-dir-synced")
