"""Every hook featstore declares is documented: what it is for, its arguments, what to return, an example."""

import inspect

import pytest

from featstore import hookspecs


def _hooks():
    return [
        (name, fn) for name, fn in inspect.getmembers(hookspecs, inspect.isfunction) if hasattr(fn, "featstore_spec")
    ]


def test_there_are_hooks():
    names = [name for name, _ in _hooks()]
    assert "register_encoders" in names and "register_importers" in names


@pytest.mark.parametrize("name,fn", _hooks(), ids=[name for name, _ in _hooks()])
def test_hook_is_documented(name, fn):
    doc = inspect.getdoc(fn) or ""
    missing = [section for section in ("Arguments:", "Returns:", "Example:\n    ```python") if section not in doc]
    assert not missing, f"hook {name} in featstore/hookspecs.py lacks the sections {missing} in its docstring"
    first = doc.split("\n\n")[0].strip()
    assert len(first) > 20, f"hook {name}: the docstring must start with what the hook is for"
    for arg in inspect.signature(fn).parameters:
        assert f"{arg}:" in doc.split("Returns:")[0], f"hook {name}: argument {arg!r} is not described under Arguments:"
    example = doc.split("Example:", 1)[1]
    assert "@hookimpl" in example and f"def {name}(" in example, f"hook {name}: the example must implement the hook"
