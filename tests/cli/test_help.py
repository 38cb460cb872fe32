"""Every ``--help``: each command and option has a help text, with its default where it has one, and
the top-level help lists every command."""

from __future__ import annotations

import argparse

import pytest

from featstore.cli import build_parser, main
from featstore.spatial.importers import get_importers


def _commands(parser: argparse.ArgumentParser, path=()):
    """(argv prefix, parser, help) of every command and subcommand."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            helps = {a.dest: a.help for a in action._choices_actions}
            for name, sub in action.choices.items():
                yield (*path, name), sub, helps.get(name)
                yield from _commands(sub, (*path, name))


COMMANDS = list(_commands(build_parser()))


def test_top_level_help_lists_every_command(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["--help"])
    assert exc.value.code == 0
    text = capsys.readouterr().out
    assert "``" not in text
    for path, _, help_text in COMMANDS:
        if len(path) == 1:
            assert path[0] in text and help_text and help_text in " ".join(text.split())


@pytest.mark.parametrize("path", [c[0] for c in COMMANDS], ids=" ".join)
def test_command_help(path, capsys):
    parser, help_text = next((p, h) for c, p, h in COMMANDS if c == path)
    assert help_text, f"featstore {' '.join(path)} has no help"
    with pytest.raises(SystemExit) as exc:
        main([*path, "--help"])
    assert exc.value.code == 0
    text = " ".join(capsys.readouterr().out.split())
    assert text.startswith(f"usage: featstore {' '.join(path)}")
    for action in parser._actions:
        if isinstance(action, (argparse._HelpAction, argparse._SubParsersAction)):
            continue
        name = action.option_strings[-1] if action.option_strings else action.dest
        if action.help == argparse.SUPPRESS:
            continue  # an old spelling kept working, not shown
        assert action.help, f"featstore {' '.join(path)}: {name} has no help"
        has_default = action.default not in (None, False, argparse.SUPPRESS) and action.nargs != argparse.REMAINDER
        if has_default:
            assert "default" in action.help, f"featstore {' '.join(path)}: {name} does not say its default"


@pytest.mark.parametrize("name", sorted(get_importers()))
def test_importer_help(name, capsys):
    with pytest.raises(SystemExit) as exc:
        main(["dataset", "import", name, "--help"])
    assert exc.value.code == 0
    text = capsys.readouterr().out
    assert f"usage: featstore dataset import {name}" in text
    if name == "whatsup":  # the description matches the choices of --subset
        from featstore.spatial.importers.whatsup import SUBSETS

        assert all(subset in text.split("options:")[0] for subset in SUBSETS)
