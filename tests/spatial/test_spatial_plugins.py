"""Importers are plugins: a plugin's importer works from the CLI; broken plugins warn and never crash."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from featstore import cli, plugins, spatial
from featstore.hookspecs import hookimpl
from featstore.spatial.importers import get_importers

torch.set_num_threads(1)
datasets = pytest.importorskip("datasets")  # the GPU machines have no `datasets`: skip there

ROOT = Path(__file__).resolve().parents[2]

# A plugin module's source: an importer of "image relation label caption words..." lines.
PLUGIN_SOURCE = '''
import datasets
from featstore.hookspecs import hookimpl


def import_lines(source, prefix=""):
    """Whitespace-separated lines: image relation label caption..."""
    cols = {"image_path": [], "spatial_relation": [], "label": [], "captions": []}
    for line in open(source):
        image, relation, label, *words = line.split()
        cols["image_path"].append(prefix + image)
        cols["spatial_relation"].append(relation)
        cols["label"].append(int(label))
        cols["captions"].append([" ".join(words)])
    return datasets.Dataset.from_dict(cols)


import_lines.add_arguments = lambda parser: parser.add_argument("--prefix", default="")


@hookimpl
def register_importers(register):
    register("lines", import_lines)
'''


@pytest.fixture
def fresh_plugins(monkeypatch):
    """A plugin manager loaded anew for the test (no third-party plugins unless the test adds some)."""
    monkeypatch.setenv("FEATSTORE_LOAD_PLUGINS", "")
    plugins.reset_plugins()
    yield
    plugins.reset_plugins()


def _lines_file(tmp_path: Path) -> Path:
    (tmp_path / "pics").mkdir()
    (tmp_path / "pics" / "a.png").write_bytes(b"x")
    source = tmp_path / "rows.txt"
    source.write_text("a.png left 1 a cup left of a plate\na.png top 0 a cup above a plate\n")
    return source


def _plugin_module(tmp_path: Path, name: str = "lines_plugin"):
    path = tmp_path / f"{name}.py"
    path.write_text(PLUGIN_SOURCE)
    import importlib.util

    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_builtin_importers_register_through_the_hook(fresh_plugins):
    importers = get_importers()
    assert list(importers) == ["table", "whatsup"]
    assert {imp.plugin for imp in importers.values()} == {"featstore.spatial.importers"}
    assert sorted(plugins.plugin_names()) == sorted(plugins.BUILTIN_PLUGINS)
    assert plugins.get_plugin_manager() is plugins.get_plugin_manager()  # loaded once


def test_a_registered_plugin_adds_an_importer_the_cli_can_use(fresh_plugins, tmp_path, capsys):
    plugins.get_plugin_manager().register(_plugin_module(tmp_path), "lines-plugin")
    importers = get_importers()
    assert importers["lines"].plugin == "lines-plugin"
    assert importers["lines"].help == "Whitespace-separated lines: image relation label caption..."
    source, out = _lines_file(tmp_path), tmp_path / "out"
    prefix = str(tmp_path / "pics") + "/"
    assert cli.main(["dataset", "import", "lines", str(source), "--prefix", prefix, "--out", str(out)]) == 0
    assert "imported 2 rows (1 images)" in capsys.readouterr().out
    ds = datasets.load_from_disk(str(out))
    assert ds["spatial_relation"] == ["left", "top"] and ds[0]["image_path"] == prefix + "a.png"
    # the CLI validates what a plugin returns before saving it: relative paths resolve against --out
    assert cli.main(["dataset", "import", "lines", str(source), "--out", str(tmp_path / "rel")]) == 1
    err = capsys.readouterr().err
    assert "row 0, field 'image_path': image file" in err and not (tmp_path / "rel").exists()
    assert cli.main(["dataset", "importers"]) == 0
    assert "lines" in capsys.readouterr().out


def test_broken_plugins_warn_and_do_not_crash(fresh_plugins, tmp_path, capsys):
    class Broken:
        @hookimpl
        def register_importers(self, register):
            raise RuntimeError("boom")

    class Clash:
        @hookimpl
        def register_importers(self, register):
            register("table", lambda source: None)
            register("bad name!", lambda source: None)

    class WrongResult:
        @hookimpl
        def register_importers(self, register):
            register("wrong", lambda source: {"not": "a dataset"}, help="returns the wrong thing")
            register("raises", lambda source: {}["key"], help="has a bug")

    pm = plugins.get_plugin_manager()
    pm.register(Broken(), "broken-plugin")
    pm.register(Clash(), "clash-plugin")
    pm.register(WrongResult(), "wrong-plugin")
    with pytest.warns(plugins.PluginWarning) as record:
        importers = get_importers()
    messages = [str(w.message) for w in record]
    assert any("'broken-plugin' failed in register_importers" in m and "boom" in m for m in messages)
    assert any("'clash-plugin' failed" in m and "bad name!" in m for m in messages)
    assert list(importers) == ["raises", "table", "whatsup", "wrong"]
    assert importers["table"].plugin == "featstore.spatial.importers"  # the clash did not replace the built-in
    with pytest.warns(plugins.PluginWarning):
        assert cli.main(["dataset", "import", "wrong", "x", "--out", str(tmp_path / "o")]) == 1
    assert "returned dict, not a datasets.Dataset" in capsys.readouterr().err
    with pytest.warns(plugins.PluginWarning):
        assert cli.main(["dataset", "import", "raises", "x", "--out", str(tmp_path / "o")]) == 1
    assert "importer 'raises' (plugin 'wrong-plugin') failed on x: KeyError('key')" in capsys.readouterr().err


def test_duplicate_names_warn_and_keep_the_first(fresh_plugins):
    class Dup:
        @hookimpl
        def register_importers(self, register):
            register("whatsup", lambda source: None)

    plugins.get_plugin_manager().register(Dup(), "dup-plugin")
    with pytest.warns(plugins.PluginWarning, match="importer 'whatsup' from plugin 'dup-plugin' ignored"):
        assert get_importers()["whatsup"].plugin == "featstore.spatial.importers"


def _fake_distribution(site: Path) -> Path:
    """An installed distribution with two 'featstore' entry points: one works, one fails to import."""
    site.mkdir(parents=True, exist_ok=True)
    (site / "fs_lines_plugin.py").write_text(PLUGIN_SOURCE)
    (site / "fs_broken_plugin.py").write_text("raise ImportError('this plugin needs a missing library')\n")
    info = site / "featstore_test_plugins-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: featstore-test-plugins\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text("[featstore]\nlines = fs_lines_plugin\nbroken = fs_broken_plugin\n")
    return site


def test_entry_point_plugins_and_the_environment_switch(fresh_plugins, tmp_path, monkeypatch):
    monkeypatch.syspath_prepend(str(_fake_distribution(tmp_path / "site")))
    monkeypatch.delenv("FEATSTORE_LOAD_PLUGINS")
    plugins.reset_plugins()
    with pytest.warns(
        plugins.PluginWarning, match=r"plugin 'broken' \(from featstore-test-plugins\) failed to load.*missing library"
    ):
        names = plugins.plugin_names()
    assert "lines" in names and "broken" not in names
    assert "lines" in get_importers()

    for selection, expected in (("lines", True), ("featstore-test-plugins", True), ("", False), (" , ", False)):
        monkeypatch.setenv("FEATSTORE_LOAD_PLUGINS", selection)
        plugins.reset_plugins()
        if selection == "featstore-test-plugins":  # a distribution name selects all its entry points
            with pytest.warns(plugins.PluginWarning, match="'broken'"):
                got = "lines" in get_importers()
        else:
            got = "lines" in get_importers()
        assert got == expected, selection
    monkeypatch.setenv("FEATSTORE_LOAD_PLUGINS", "lines,nosuch")
    plugins.reset_plugins()
    with pytest.warns(plugins.PluginWarning, match="names plugin 'nosuch'"):
        assert "lines" in get_importers()


def test_cli_with_an_installed_plugin_in_a_fresh_process(tmp_path):
    site = _fake_distribution(tmp_path / "site")
    source, out = _lines_file(tmp_path), tmp_path / "out"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(site), str(ROOT), os.environ.get("PYTHONPATH", "")])}
    env.pop("FEATSTORE_LOAD_PLUGINS", None)
    argv = [
        sys.executable,
        "-m",
        "featstore",
        "dataset",
        "import",
        "lines",
        str(source),
        "--prefix",
        str(tmp_path / "pics") + "/",
        "--out",
        str(out),
    ]
    done = subprocess.run(argv, env=env, capture_output=True, text=True, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert "plugin 'broken'" in done.stderr and "imported 2 rows" in done.stdout
    assert spatial.validate(datasets.load_from_disk(str(out)))["rows"] == 2
    env["FEATSTORE_LOAD_PLUGINS"] = ""
    done = subprocess.run(argv[:-1] + [str(tmp_path / "out2")], env=env, capture_output=True, text=True, cwd=tmp_path)
    assert done.returncode == 2 and "no importer 'lines'" in done.stderr and "broken" not in done.stderr


def test_hook_documentation_has_arguments_returns_and_an_example():
    from featstore import hookspecs

    doc = hookspecs.register_importers.__doc__
    assert "Arguments:" in doc and "Returns:" in doc and "Example:" in doc
    example = textwrap.dedent(doc.split("```python", 1)[1].split("```", 1)[0])
    namespace: dict = {}
    exec(compile(example, "register_importers example", "exec"), namespace)
    got = []
    namespace["register_importers"](lambda name, obj, help="": got.append((name, help)))
    assert got == [("mycsv", "my lab's CSV files")]
