"""``--help`` of every command reads whole at 80 columns.

The commands are found by walking the app's click group, so a command added later is checked
too.  What is checked: no line wider than the terminal, no "…" or "..." cut, every option's
names in full, and every help text (the command's and each parameter's) word for word, so a
word lost to rich markup (``[plot]``), cut or broken at a hyphen fails."""

from __future__ import annotations

import inspect
import re

import click
import pytest
import typer
from typer.testing import CliRunner

from waveglow_cli.cli import app

WIDTH = 80
ENV = {"COLUMNS": str(WIDTH), "TERM": "dumb", "NO_COLOR": "1", "WAVEGLOW_OFFLINE": "1"}


def _commands(command: click.Command, path: tuple[str, ...] = ()
              ) -> list[tuple[tuple[str, ...], click.Command]]:
    """(the words that name it, the command) for the group and everything under it."""
    found = [(path, command)]
    for name, sub in sorted(getattr(command, "commands", {}).items()):
        if not sub.hidden:
            found += _commands(sub, (*path, name))
    return found


COMMANDS = _commands(typer.main.get_command(app))


def _help(path: tuple[str, ...]) -> str:
    result = CliRunner().invoke(app, [*path, "--help"], env=ENV, prog_name="waveglow")
    assert result.exit_code == 0, result.output
    return result.output


def _flat(text: str) -> str:
    return " ".join(text.split())


def test_the_walk_finds_every_command():
    names = {path[0] for path, _ in COMMANDS if path}
    assert {"synth", "mel", "info", "list", "compare", "export", "serve", "train"} <= names


@pytest.mark.parametrize(("path", "command"), COMMANDS,
                         ids=[" ".join(path) or "waveglow" for path, _ in COMMANDS])
def test_help_at_80_columns_is_whole(path, command):
    output = _help(path)
    assert "…" not in output
    too_wide = [line for line in output.splitlines() if len(line) > WIDTH]
    assert not too_wide, too_wide
    tokens = set(re.split(r"[\s,/]+", output))
    flat = _flat(output)
    for param in command.params:
        if getattr(param, "hidden", False):
            continue
        for name in param.opts + param.secondary_opts:
            if name.startswith("-"):
                assert name in tokens, f"{name} is not shown whole"
        if getattr(param, "help", None):
            assert _flat(param.help) in flat, f"help of {param.name} is not shown whole"
    description = inspect.cleandoc(command.help or "")
    assert _flat(description) in flat, "the description is not shown whole"


def test_the_command_list_shows_each_description_whole():
    flat = _flat(_help(()))
    assert "..." not in flat.replace("[ARGS]...", "")
    for path, command in COMMANDS:
        if len(path) == 1:
            first_paragraph = inspect.cleandoc(command.help or "").partition("\n\n")[0]
            assert f"{path[0]} {_flat(first_paragraph)}" in flat


def test_usage_names_arguments_in_capitals_without_braces():
    usages = [line for path, _ in COMMANDS if path
              for line in _help(path).splitlines() if line.startswith("Usage:")]
    assert "Usage: waveglow synth [OPTIONS] INPUT..." in usages
    assert "Usage: waveglow compare [OPTIONS] REFERENCE GENERATED" in usages
    for usage in usages:
        arguments = usage.split("[OPTIONS]", 1)[1]
        assert "{" not in arguments and arguments == arguments.upper(), usage
