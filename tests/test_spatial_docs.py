"""Every ```bash command and ```python block of datasets/README.md runs, in document order."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import torch
from test_spatial_importers import make_whatsup

from featstore import cli

torch.set_num_threads(1)
README = Path(__file__).resolve().parent.parent / "datasets" / "README.md"


def blocks(path: Path) -> list[tuple[str, str]]:
    return re.findall(r"```(python|bash)\n(.*?)```", path.read_text(), flags=re.S)


def test_datasets_readme_runs(tmp_path, monkeypatch, capsys):
    found = blocks(README)
    assert sum(kind == "bash" for kind, _ in found) >= 5 and sum(kind == "python" for kind, _ in found) >= 8
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("FEATSTORE_LOAD_PLUGINS", "")
    make_whatsup(tmp_path / "datasets" / "whatsup")  # stands in for the downloaded benchmark
    namespace: dict = {}
    for i, (kind, text) in enumerate(found, start=1):
        if kind == "bash":
            for line in text.splitlines():
                if line.strip():
                    argv = shlex.split(line)
                    assert argv[0] == "featstore", line
                    assert cli.main(argv[1:]) == 0, f"datasets/README.md block {i}: {line}\n{capsys.readouterr().err}"
            continue
        try:
            exec(compile(text, f"datasets/README.md block {i}", "exec"), namespace)
        except Exception as exc:  # name the block that broke
            raise AssertionError(f"datasets/README.md python block {i} failed: {exc!r}\n{text}") from exc
    out = capsys.readouterr().out
    assert "wrote 2000 rows to datasets/spatial_hf" in out
    assert "imported 2 rows (2 images) from my_table.csv" in out
    assert (tmp_path / "datasets" / "whatsup_b").is_dir() and (
        tmp_path / "datasets" / "spatial_split" / "test"
    ).is_dir()
