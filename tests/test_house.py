"""The house rules of featstore's code, read from the source with ``ast`` (function-local and
TYPE_CHECKING imports included): no import cycles, few modules at the top, no module reaching into
another's private names, no module over 450 lines, old module paths still importable.

``python tests/test_house.py`` prints the figures.
"""

from __future__ import annotations

import ast
import importlib
import sys
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "featstore"
MAX_TOP_LEVEL_MODULES = 12
MAX_MODULE_LINES = 450
MAX_README_BYTES = 15_000


@dataclass
class Graph:
    """featstore's modules, their imports of each other, and the private names crossing modules."""

    files: dict[str, Path] = field(default_factory=dict)
    edges: dict[str, set[str]] = field(default_factory=dict)
    private_imports: list[str] = field(default_factory=list)
    private_attributes: list[str] = field(default_factory=list)

    def cycles(self) -> list[list[str]]:
        """Strongly connected components of more than one module (Tarjan)."""
        index: dict[str, int] = {}
        low: dict[str, int] = {}
        stack: list[str] = []
        on_stack: set[str] = set()
        found: list[list[str]] = []

        def visit(v: str) -> None:
            index[v] = low[v] = len(index)
            stack.append(v)
            on_stack.add(v)
            for w in self.edges[v]:
                if w not in index:
                    visit(w)
                    low[v] = min(low[v], low[w])
                elif w in on_stack:
                    low[v] = min(low[v], index[w])
            if low[v] == index[v]:
                component = []
                while True:
                    w = stack.pop()
                    on_stack.discard(w)
                    component.append(w)
                    if w == v:
                        break
                if len(component) > 1:
                    found.append(sorted(component))

        for v in sorted(self.edges):
            if v not in index:
                visit(v)
        return found


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def read_graph() -> Graph:
    g = Graph()
    for path in sorted(PACKAGE.rglob("*.py")):
        g.files[module_name(path)] = path
    for name, path in g.files.items():
        g.edges[name] = set()
        tree = ast.parse(path.read_text(), str(path))
        is_package = path.name == "__init__.py"
        defined = _names_defined(tree)
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                for alias in node.names:
                    _add_edge(g, name, alias.name)
            elif isinstance(node, ast.ImportFrom):
                base = _absolute(name, node, is_package)
                if not base.startswith("featstore"):
                    continue
                for alias in node.names:
                    target = _add_edge(g, name, f"{base}.{alias.name}" if f"{base}.{alias.name}" in g.files else base)
                    if _is_private(alias.name) and f"{base}.{alias.name}" not in g.files and target != name:
                        g.private_imports.append(f"{name} imports {alias.name} from {base}")
            elif isinstance(node, ast.Attribute) and _is_private(node.attr):
                owner = node.value
                if isinstance(owner, ast.Name) and owner.id in ("self", "cls"):
                    continue
                if node.attr not in defined:
                    g.private_attributes.append(f"{name}:{node.lineno}: {ast.unparse(node)}")
    return g


def _absolute(module: str, node: ast.ImportFrom, is_package: bool) -> str:
    if not node.level:
        return node.module or ""
    base = module.split(".")
    if not is_package:
        base = base[:-1]
    base = base[: len(base) - (node.level - 1)]
    return ".".join(base + ([node.module] if node.module else []))


def _add_edge(g: Graph, source: str, target: str) -> str | None:
    while target and target not in g.files:
        if "." not in target:
            return None
        target = target.rsplit(".", 1)[0]
    if target and target != source and target.startswith("featstore"):
        g.edges[source].add(target)
    return target


def _is_private(name: str) -> bool:
    return name.startswith("_") and not name.startswith("__")


def _names_defined(tree: ast.AST) -> set[str]:
    """Names a module defines itself (functions, classes, attributes it assigns, names it imports)."""
    out = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            out.add(node.name)
        elif isinstance(node, ast.Attribute) and isinstance(node.ctx, ast.Store):
            out.add(node.attr)
        elif isinstance(node, ast.Name) and isinstance(node.ctx, ast.Store):
            out.add(node.id)
        elif isinstance(node, ast.arg):
            out.add(node.arg)
    return out


@pytest.fixture(scope="module")
def graph() -> Graph:
    return read_graph()


def test_no_import_cycles(graph):
    assert graph.cycles() == []


def test_few_modules_directly_in_the_package():
    top = sorted(p.name for p in PACKAGE.glob("*.py"))
    assert len(top) <= MAX_TOP_LEVEL_MODULES, top


def test_no_private_name_crosses_a_module(graph):
    assert graph.private_imports == []
    assert graph.private_attributes == []


def test_no_module_is_too_long(graph):
    long = {
        name: n for name, path in graph.files.items() if (n := len(path.read_text().splitlines())) > MAX_MODULE_LINES
    }
    assert long == {}


def test_the_store_layer_imports_nothing_above_it(graph):
    above = (
        "featstore.batches",
        "featstore.encoders",
        "featstore.spatial",
        "featstore.extraction",
        "featstore.probe",
        "featstore.demo",
        "featstore.cli",
        "featstore.plugins",
    )
    wrong = {
        m: sorted(t for t in targets if t.startswith(above))
        for m, targets in graph.edges.items()
        if m.startswith("featstore.store")
    }
    assert {m: t for m, t in wrong.items() if t} == {}


def test_readme_is_a_landing_page():
    assert (ROOT / "README.md").stat().st_size <= MAX_README_BYTES


@pytest.mark.parametrize("old", sorted(importlib.import_module("featstore._moved").MOVED))
def test_old_module_paths_still_import(old):
    """``import featstore.<old>`` gives the moved module itself, with a DeprecationWarning naming it."""
    from featstore import _moved

    new = importlib.import_module(_moved.MOVED[old])
    sys.modules.pop(old, None)
    with pytest.warns(DeprecationWarning, match=_moved.MOVED[old].replace(".", r"\.")):
        module = importlib.import_module(old)
    assert module is new
    assert module.__spec__.name == _moved.MOVED[old]  # the alias did not rename the real module
    parent, _, child = old.rpartition(".")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        assert getattr(importlib.import_module(parent), child) is new  # `from featstore import <old>` too


def report() -> str:
    g = read_graph()
    lines = sorted(((len(p.read_text().splitlines()), n) for n, p in g.files.items()), reverse=True)
    return "\n".join(
        [
            f"modules: {len(g.files)}, directly in featstore/: {len(list(PACKAGE.glob('*.py')))}",
            f"import cycles: {len(g.cycles())} over {sum(map(len, g.cycles()))} modules",
            f"private names imported across modules: {len(g.private_imports)}; private attributes reached: "
            f"{len(g.private_attributes)}",
            f"longest modules: {', '.join(f'{n} {k}' for k, n in lines[:6])}",
            f"README.md: {(ROOT / 'README.md').stat().st_size} bytes",
        ]
        + [f"  cycle: {c}" for c in g.cycles()]
        + [f"  {x}" for x in g.private_imports + g.private_attributes]
    )


if __name__ == "__main__":
    print(report())
