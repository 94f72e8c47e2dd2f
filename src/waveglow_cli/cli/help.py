"""How ``--help`` is laid out: click's plain layout, not rich's table.

Rich's table gives every option five columns of its own and cuts whatever does not fit at
80 columns (``--denoiser-stren…``); click's plain layout puts a long option name on a line
of its own and wraps the help beside it, so nothing is cut at any width.  Three changes to
it: a line never breaks at a hyphen (``--no-overwrite`` and ``WAVEGLOW_HOME/compile-cache``
stay whole), the command list shows each command's first paragraph in full, wrapped, where
click would cut it short with "...", and usage lines name arguments as click does
(``INPUT...``).  The app sets ``rich_markup_mode=None``, so square brackets in help texts are
plain text too.  tests/test_help.py renders every command's help at 80 columns."""

from __future__ import annotations

import inspect
from collections.abc import Sequence
from typing import Any

import typer

# typer vendors click (typer._click): its Context and HelpFormatter are the types the
# overridden methods below are declared with (typer.Context.formatter_class is this class).
from typer._click import Context as ClickContext
from typer._click import HelpFormatter as ClickHelpFormatter
from typer.core import TyperCommand, TyperGroup

# textwrap breaks after a hyphen-minus; the non-breaking hyphen (U+2011) stands in for it
# while a text is wrapped, and is turned back as it is written
_KEPT_HYPHEN = "\u2011"


def _keep_hyphens(text: str) -> str:
    return text.replace("-", _KEPT_HYPHEN)


class HelpFormatter(ClickHelpFormatter):
    """click's help formatter, never breaking a line at a hyphen."""

    def write(self, string: str) -> None:
        super().write(string.replace(_KEPT_HYPHEN, "-"))

    def write_text(self, text: str) -> None:
        super().write_text(_keep_hyphens(text))

    def write_dl(self, rows: Sequence[tuple[str, str]], col_max: int = 30,
                 col_spacing: int = 2) -> None:
        super().write_dl([(term, _keep_hyphens(text)) for term, text in rows], col_max,
                         col_spacing)


class HelpContext(typer.Context):
    formatter_class = HelpFormatter


class HelpCommand(TyperCommand):
    """A command whose ``--help`` uses :class:`HelpFormatter`, and whose usage line names a
    required argument as click does (``INPUT...``; typer writes ``{INPUT}...``, braces that
    read as a choice)."""

    context_class = HelpContext

    def collect_usage_pieces(self, ctx: ClickContext) -> list[str]:
        return [_unbraced(piece) for piece in super().collect_usage_pieces(ctx)]


def _unbraced(piece: str) -> str:
    name, dots = (piece[:-3], "...") if piece.endswith("...") else (piece, "")
    if name.startswith("{") and name.endswith("}"):
        name = name[1:-1]
    return name + dots


class HelpGroup(TyperGroup):
    """The ``waveglow`` group: its ``--help`` uses :class:`HelpFormatter` and lists each
    command with the first paragraph of its help, whole."""

    context_class = HelpContext

    def format_commands(self, ctx: ClickContext, formatter: ClickHelpFormatter) -> None:
        rows = [(name, summary(command)) for name in self.list_commands(ctx)
                if (command := self.get_command(ctx, name)) is not None and not command.hidden]
        if rows:
            with formatter.section("Commands"):
                formatter.write_dl(rows)


def summary(command: Any) -> str:
    """A (click) command's one-paragraph description: its short help, else its help's first
    paragraph on one line."""
    text = command.short_help or inspect.cleandoc(command.help or "").partition("\n\n")[0]
    return " ".join(text.split())
