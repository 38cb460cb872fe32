"""featstore/_core.pyi and featstore/_cuda.pyi name exactly what the compiled modules export.

Each stub is read with ast (nothing is type-checked here): its module-level functions and classes must
be dir() of the module (less the module dunders), and each class's methods and properties the
attributes the class defines. _cuda is checked where it is built; no GPU is needed (importing it
never touches one).
"""

from __future__ import annotations

import ast
import importlib
import os
import re
from pathlib import Path

import numpy as np
import pytest
import torch

torch.set_num_threads(1)

MODULE_DUNDERS = {"__doc__", "__file__", "__loader__", "__name__", "__package__", "__spec__"}
# Attributes every pybind11 class has (pybind11's internals and the class machinery), not its API.
CLASS_IGNORED = {"__doc__", "__module__", "__dict__", "__weakref__"}
# The buffer protocol: in a stub as __buffer__ (PEP 688); only Python >= 3.12 shows it as an attribute.
BUFFER_DUNDERS = {"__buffer__", "__release_buffer__"}


def _import(name: str):
    """The compiled module: _core must be built; _cuda is skipped where it is not."""
    if name == "featstore._core":
        return importlib.import_module(name)
    try:
        return importlib.import_module(name)
    except ImportError as e:
        pytest.skip(f"{name} is not built ({e})")


def _stub(module) -> ast.Module:
    """The module's .pyi: beside the compiled file (a wheel), or in the package's source folder (an
    editable install keeps the compiled files in site-packages and the rest in the source tree)."""
    import featstore

    name = module.__name__.rsplit(".", 1)[-1] + ".pyi"
    folders = [Path(module.__file__).parent, *map(Path, featstore.__path__)]
    path = next((f / name for f in folders if (f / name).is_file()), None)
    assert path is not None, f"no {name} in {folders}"
    return ast.parse(path.read_text(), filename=str(path))


def _defined(body: list[ast.stmt]) -> dict[str, ast.stmt]:
    names = {}
    for node in body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            names[node.name] = node
        elif isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
            names[node.target.id] = node
        elif isinstance(node, ast.Assign):
            names.update((t.id, node) for t in node.targets if isinstance(t, ast.Name))
    return names


def _class_attributes(cls: type) -> set[str]:
    return {n for n in vars(cls) if n not in CLASS_IGNORED and "pybind11" not in n}


@pytest.mark.parametrize("name", ["featstore._core", "featstore._cuda"])
def test_stub_names_match_the_compiled_module(name):
    module = _import(name)
    stub = _defined(_stub(module).body)
    assert set(stub) == set(dir(module)) - MODULE_DUNDERS
    for attr, node in stub.items():
        runtime = getattr(module, attr)
        if isinstance(node, ast.ClassDef):
            assert isinstance(runtime, type), attr
            members = _defined(node.body)
            assert set(members) - BUFFER_DUNDERS == _class_attributes(runtime) - BUFFER_DUNDERS, attr
            for member, sub in members.items():
                if isinstance(sub, ast.FunctionDef) and not _is_property(sub) and member not in BUFFER_DUNDERS:
                    assert _stub_params(sub) == _runtime_params(getattr(runtime, member)), f"{attr}.{member}"
        else:
            assert callable(runtime) and not isinstance(runtime, type), attr
            assert _stub_params(node) == _runtime_params(runtime), attr


def _is_property(node: ast.FunctionDef) -> bool:
    return any(isinstance(d, ast.Name) and d.id == "property" for d in node.decorator_list)


def _stub_params(node: ast.FunctionDef) -> list[str]:
    return [a.arg for a in (*node.args.posonlyargs, *node.args.args, *node.args.kwonlyargs) if a.arg != "self"]


def _runtime_params(func) -> list[str]:
    """Parameter names from pybind11's signature line, e.g. 'gather(src: object, row_bytes: int) -> None'."""
    signature = func.__doc__.strip().splitlines()[0]
    inside = signature[signature.index("(") + 1 : signature.rindex(") ->")]
    return [p for p in re.findall(r"(?:^|, )(\w+):", inside) if p != "self"]


def _docstrings(body: list[ast.stmt]):
    for node in body:
        if isinstance(node, (ast.FunctionDef, ast.ClassDef)):
            yield node
            if isinstance(node, ast.ClassDef):
                yield from _docstrings(node.body)


@pytest.mark.parametrize("name", ["featstore._core", "featstore._cuda"])
def test_stub_entries_have_one_line_docstrings_and_full_annotations(name):
    tree = _stub(_import(name))
    for node in _docstrings(tree.body):
        doc = ast.get_docstring(node)
        assert doc and "\n" not in doc, f"{node.name}: needs a one-line docstring"
        if isinstance(node, ast.FunctionDef):
            args = [*node.args.posonlyargs, *node.args.args, *node.args.kwonlyargs]
            missing = [a.arg for a in args if a.annotation is None and a.arg != "self"]
            assert not missing and node.returns is not None, f"{node.name}: unannotated {missing or 'return'}"


def test_mapped_file_stub_matches_its_runtime_signature(tmp_path):
    """The stub's MappedFile.__buffer__ stands for the buffer protocol, and the stub's keywords work."""
    core = _import("featstore._core")
    f = tmp_path / "f.bin"
    f.write_bytes(b"abcd")
    mf = core.MappedFile(path=f)
    assert bytes(memoryview(mf)) == b"abcd" and mf.size == 4 and mf.path == str(f)
    mf.advise(offset=0, length=4, advice="willneed")
    core.set_num_threads(n=core.get_num_threads())
    out = bytearray(2)
    core.gather(src=b"abcd", row_bytes=2, indices=np.array([1], dtype=np.int64), out=out, threads=1)
    assert out == b"cd"
    fd = os.open(f, os.O_RDONLY)
    try:
        core.read_rows(
            fd=fd,
            offset=1,
            row_bytes=1,
            n_rows=3,
            indices=np.array([2, 0], dtype=np.int64),
            out=out,
            queue_depth=2,
            max_request_bytes=4,
            path=f,
        )
    finally:
        os.close(fd)
    assert out == b"db"


def test_stubs_and_py_typed_are_shipped_with_the_package():
    import featstore

    root = Path(featstore.__file__).parent
    assert (root / "py.typed").is_file() and (root / "_core.pyi").is_file() and (root / "_cuda.pyi").is_file()
