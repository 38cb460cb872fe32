"""Every example in the documentation runs: docs/**/*.md, README.md and datasets/README.md.

One test per page. A page's fenced blocks run in document order in a fresh temporary working
directory: ```python blocks in one fresh namespace per page (torch at 1 thread), ```bash / ```sh /
```console blocks with ``bash -euo pipefail`` in the same directory, with this interpreter's
``bin`` first on PATH (so ``featstore ...`` is the command of the package under test).

Markers, on the line before a fence (HTML comments: invisible on the rendered page):

- ``<!-- not-run: <reason> -->``: the block cannot run here (a GPU, several machines, SLURM, the
  network, an install into the environment); it is skipped, and the reason must be given;
- ``<!-- file: <path> -->``: the block is a file the reader saves; it is written to ``<path>``
  (relative to the page's directory) instead of being run.

Blocks in other languages (```text, ```json, ```toml, ```yaml, ...) only show output or file
contents and are not run. A fence without a language, or with one this harness does not know,
fails the page: a typo must not silently skip an example.

Also: ``mkdocs build --strict`` succeeds (skipped without mkdocs), and the README stays a landing page.
"""

from __future__ import annotations

import importlib.util
import os
import re
import subprocess
import sys
import traceback
import warnings
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[2]
PAGES = sorted(p.relative_to(ROOT).as_posix() for p in (ROOT / "docs").rglob("*.md")) + [
    "README.md",
    "datasets/README.md",
]

PYTHON = {"python", "py", "python3"}
SHELL = {"bash", "sh", "shell", "console"}
SHOWN = {
    "text",
    "json",
    "jsonl",
    "toml",
    "yaml",
    "yml",
    "ini",
    "csv",
    "cpp",
    "c",
    "diff",
    "output",
    "pycon",
    "cmake",
    "make",
    "makefile",
}

FENCE = re.compile(r"^(?P<indent>[ \t]*)(?P<fence>`{3,}|~{3,})[ \t]*(?P<info>[^`\n]*)$")
MARKER = re.compile(r"^\s*<!--\s*(?P<kind>not-run|file)\s*:(?P<value>.*?)-->\s*$")

# Output a page's examples must print (beyond the asserts inside the examples themselves).
EXPECTED_OUTPUT = {
    "docs/getting-started.md": ["test_acc", "relation"],
    "docs/probes.md": ["probe_results.json"],
    "docs/cli.md": ["usage: featstore info", "featstore info: error: nowhere does not exist", "deleted enc/a"],
    "README.md": ["[(40, 100)]", "dinov2/last"],
}


@dataclass
class Block:
    page: str
    number: int  # 1-based, among the page's fenced blocks
    line: int  # 1-based line of the opening fence
    lang: str
    code: str
    not_run: str | None  # the reason, when marked not-run
    file: str | None  # the target path, when marked as a file

    @property
    def where(self) -> str:
        first = next((ln.strip() for ln in self.code.splitlines() if ln.strip()), "")
        return f"{self.page} block {self.number} (line {self.line}, ```{self.lang}): {first[:80]!r}"


def parse_blocks(page: str, text: str) -> list[Block]:
    """Every fenced block of a Markdown page, with its language and the marker on the line before it."""
    lines = text.splitlines()
    blocks: list[Block] = []
    i = 0
    while i < len(lines):
        m = FENCE.match(lines[i])
        if not m:
            i += 1
            continue
        indent, fence, info = len(m["indent"]), m["fence"], m["info"].strip()
        lang = info.split()[0].strip("{}.").lower() if info else ""
        start = i
        body: list[str] = []
        i += 1
        while i < len(lines):
            close = lines[i].strip()
            if close and set(close) == {fence[0]} and len(close) >= len(fence) and lines[i].startswith(m["indent"]):
                break
            body.append(lines[i][indent:] if lines[i][:indent].strip() == "" else lines[i].lstrip())
            i += 1
        else:
            raise AssertionError(f"{page}: the fence opened on line {start + 1} is never closed")
        i += 1
        prev = next((lines[j] for j in range(start - 1, -1, -1) if lines[j].strip()), "")
        marker = MARKER.match(prev)
        not_run = marker["value"].strip() if marker and marker["kind"] == "not-run" else None
        file = marker["value"].strip() if marker and marker["kind"] == "file" else None
        blocks.append(Block(page, len(blocks) + 1, start + 1, lang, "\n".join(body) + "\n", not_run, file))
    return blocks


def shell_script(block: Block) -> str:
    """A ```console block's commands are its ``$ `` lines (the rest is output); other shell blocks run whole."""
    if block.lang == "console":
        prompts = [ln[2:] for ln in block.code.splitlines() if ln.startswith("$ ")]
        if prompts:
            return "\n".join(prompts) + "\n"
    return block.code


def _fail(block: Block, detail: str) -> None:
    pytest.fail(f"{block.where} failed:\n{detail}\n--- the block ---\n{block.code}", pytrace=False)


def run_page(page: str, workdir: Path, capsys) -> str:
    """Run every block of ``page`` in ``workdir``; returns what it printed (Python and shell)."""
    blocks = parse_blocks(page, (ROOT / page).read_text())
    for b in blocks:
        assert b.lang, f"{b.where}: the fence names no language; write ```python, ```bash, ```text, ..."
        assert b.lang in PYTHON | SHELL | SHOWN, (
            f"{b.where}: unknown language {b.lang!r} (known: {sorted(PYTHON | SHELL | SHOWN)})"
        )
        if b.not_run is not None:
            assert b.not_run, f"{b.where}: a not-run marker must say why the block cannot run here"
    env = dict(os.environ)
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    env.update(
        HF_HUB_OFFLINE="1",
        TRANSFORMERS_OFFLINE="1",
        HF_DATASETS_OFFLINE="1",
        OMP_NUM_THREADS="1",
        PYTHONDONTWRITEBYTECODE="1",
    )
    namespace: dict = {"__name__": "__docs__"}
    printed: list[str] = []
    for b in blocks:
        if b.not_run is not None:
            continue
        if b.file is not None:
            target = workdir / b.file
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_text(b.code)
            continue
        if b.lang in PYTHON:
            try:
                exec(compile(b.code, f"<{b.page} block {b.number}, line {b.line}>", "exec"), namespace)
            except BaseException:  # name the page and the block
                printed.append(capsys.readouterr().out)
                _fail(b, traceback.format_exc(limit=-6))
        elif b.lang in SHELL:
            proc = subprocess.run(
                ["bash", "-euo", "pipefail", "-c", shell_script(b)],
                cwd=workdir,
                env=env,
                capture_output=True,
                text=True,
                timeout=600,
            )
            printed.append(proc.stdout + proc.stderr)
            if proc.returncode != 0:
                _fail(
                    b,
                    f"exit status {proc.returncode}\n--- stdout ---\n{proc.stdout[-4000:]}\n"
                    f"--- stderr ---\n{proc.stderr[-4000:]}",
                )
    printed.append(capsys.readouterr().out)
    return "".join(printed)


@pytest.fixture
def isolated(monkeypatch, tmp_path):
    """A fresh working directory; plugin registrations, imports from it and sys.path restored afterwards."""
    from featstore import get_num_threads, plugins, set_num_threads

    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    for name in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_DATASETS_OFFLINE"):
        monkeypatch.setenv(name, "1")
    threads, gather_threads, path = torch.get_num_threads(), get_num_threads(), list(sys.path)
    torch.set_num_threads(1)
    yield work
    torch.set_num_threads(threads)
    set_num_threads(gather_threads)
    sys.path[:] = path
    for name, module in list(sys.modules.items()):
        if str(getattr(module, "__file__", None) or "").startswith(str(tmp_path)):
            del sys.modules[name]
    plugins.reset_plugins()


@pytest.mark.parametrize("page", PAGES)
def test_page_examples_run(page, isolated, capsys):
    with warnings.catch_warnings():  # the docs show today's module paths, not the deprecated aliases
        warnings.filterwarnings("error", message=r"featstore\.\S+ moved to", category=DeprecationWarning)
        out = run_page(page, isolated, capsys)
    missing = [s for s in EXPECTED_OUTPUT.get(page, []) if s not in out]
    assert not missing, f"{page}: its examples did not print {missing}; output:\n{out[-3000:]}"


def test_every_page_has_examples_that_run():
    """A page of the guide without a single runnable block is a page nobody tests."""
    exempt = {"docs/performance.md", "docs/reliability.md"}
    for page in PAGES:
        if page.startswith("docs/reference/") or page in exempt:
            continue
        runnable = [
            b
            for b in parse_blocks(page, (ROOT / page).read_text())
            if b.lang in PYTHON | SHELL and b.not_run is None and b.file is None
        ]
        assert runnable, f"{page} has no runnable example"


def test_parser_finds_markers_and_indented_blocks():
    text = (
        "intro\n\n<!-- not-run: needs a GPU -->\n```python\nimport x\n```\n\n- item\n\n  ```bash\n  echo hi\n  ```\n"
        "<!-- file: a/b.py -->\n```python\nA = 1\n```\n<!-- not-run: -->\n```text\nout\n```\n"
    )
    blocks = parse_blocks("t.md", text)
    assert [(b.lang, b.not_run, b.file) for b in blocks] == [
        ("python", "needs a GPU", None),
        ("bash", None, None),
        ("python", None, "a/b.py"),
        ("text", "", None),
    ]
    assert blocks[1].code == "echo hi\n" and blocks[1].line == 10
    assert shell_script(Block("t", 1, 1, "console", "$ echo a\na\n", None, None)) == "echo a\n"


def test_readme_is_a_landing_page():
    readme = ROOT / "README.md"
    assert readme.stat().st_size <= 15_000, f"README.md is {readme.stat().st_size} bytes; keep it under 15,000"
    text = readme.read_text()
    makefile = (ROOT / "Makefile").read_text()
    for target in ("demo", "test"):
        assert f"make {target}" in text and re.search(rf"^{target}:", makefile, re.M), target
    links = re.findall(r"\]\(((?:docs|datasets|benchmarks|plugins)/[^)#\s]+)", text)
    assert links, "README.md links to no docs page"
    broken = [link for link in links if not (ROOT / link).exists()]
    assert not broken, f"README.md links to missing files: {broken}"


def test_mkdocs_build_strict(tmp_path):
    missing = [
        m
        for m in ("mkdocs", "material", "mkdocstrings", "mkdocstrings_handlers.python")
        if importlib.util.find_spec(m.split(".")[0]) is None
        or (m == "mkdocstrings_handlers.python" and importlib.util.find_spec(m) is None)
    ]
    if missing:
        pytest.skip(f"{', '.join(missing)} not installed: pip install -e '.[docs]' to build the docs")
    site = tmp_path / "site"
    proc = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "-f", str(ROOT / "mkdocs.yml"), "-d", str(site)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "NO_MKDOCS_2_WARNING": "1"},
    )
    assert proc.returncode == 0, f"mkdocs build --strict failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-6000:]}"
    store_page = (site / "reference" / "store" / "index.html").read_text()
    assert "FeatureStore" in store_page and "create_feature_set" in store_page, "the API reference lost its docstrings"


def _commands(parser, prefix="featstore"):
    """(command path, option strings) of every (sub)command of an argparse parser."""
    import argparse

    out = [
        (
            prefix,
            [
                s
                for a in parser._actions
                if not isinstance(a, argparse._SubParsersAction)
                for s in a.option_strings
                if s.startswith("--") and s != "--help"
            ],
        )
    ]
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                out += _commands(sub, f"{prefix} {name}")
    return out


def test_cli_reference_names_every_command_and_option():
    """docs/cli.md lists every command and every option the parser has (and each importer's)."""
    from featstore.cli import build_parser
    from featstore.cli.dataset import importer_parser
    from featstore.spatial.importers import get_importers

    text = (ROOT / "docs" / "cli.md").read_text()
    commands = _commands(build_parser())
    for name, importer in get_importers().items():
        if importer.plugin == "featstore.spatial.importers":  # the built-in ones
            commands += _commands(importer_parser(name, importer), f"featstore dataset import {name}")
    missing = [f"{cmd}: {opt}" for cmd, opts in commands for opt in opts if opt not in text]
    missing += [cmd for cmd, _ in commands if cmd.split()[-1] not in text]
    assert not missing, f"docs/cli.md does not mention: {missing}"
