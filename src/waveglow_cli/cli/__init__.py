"""The ``waveglow`` command: thin Typer commands over the library.

Exit codes: 0 everything worked, 1 some input failed, 2 usage error.  Messages are one line
on stderr; ``WAVEGLOW_DEBUG=1`` adds the traceback.  Standard output carries data only
(WAV or .npy bytes for ``-o -``).

Each command module declares its options, calls the library (:mod:`waveglow_cli.jobs.core`,
:mod:`waveglow_cli.vocoder`, ...) and maps errors to exit codes through
:func:`~waveglow_cli.cli.common.errors_to_exit`.  Importing this package imports no torch, so
``waveglow --help`` stays fast.
"""

from __future__ import annotations

import sys
import traceback
from pathlib import Path
from typing import Annotated

import typer

from ..errors import WaveGlowError
from ..settings import Settings
from .analysis import plot, score
from .bench import bench
from .checkpoints import convert, fetch, info, list_checkpoints, rm
from .common import EXIT_INPUT_FAILED, stderr_console
from .compare import compare
from .export import export
from .help import HelpCommand, HelpGroup
from .mel import mel
from .serve import serve
from .synth import synth
from .train import train

# Typer labels each option with its Python annotation (<bool>, <str>, <list[str]>); show
# the words click uses instead, and nothing for a flag (its name says it all).
_TYPE_LABELS = {"<bool>": None, "<str>": "TEXT", "<int>": "INTEGER", "<float>": "FLOAT",
                "<list[str]>": "TEXT", "<Path>": "PATH", "<path>": "PATH",
                "<float range>": "FLOAT", "<int range>": "INTEGER"}


def _plain_type_labels() -> None:
    import typer.core

    for name in ("TyperOption", "TyperArgument"):
        cls = getattr(typer.core, name, None)
        original = getattr(cls, "display_type_rich", None)
        if original is None or getattr(original, "plain", False):
            continue

        def display_type_rich(self: object, ctx: object, _original: object = original
                              ) -> str | None:
            label = _original(self, ctx)  # type: ignore[operator]
            return _TYPE_LABELS.get(label, label) if isinstance(label, str) else label

        display_type_rich.plain = True  # type: ignore[attr-defined]
        # (setattr: the class is found at run time, so its type does not declare the method)
        setattr(cls, "display_type_rich", display_type_rich)  # noqa: B010


_plain_type_labels()

# click's plain help layout (cli/help.py): rich's table cuts option names at 80 columns
app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  cls=HelpGroup, rich_markup_mode=None,
                  context_settings={"max_content_width": 100},
                  help="WaveGlow vocoder: mel spectrograms to audio, exactly as NVIDIA's "
                       "reference, on CPU, CUDA or MPS.")


def _version(value: bool) -> None:
    if value:
        from .._version import package_version

        typer.echo(f"waveglow {package_version()}")
        raise typer.Exit()


@app.callback()
def _root(version: Annotated[bool, typer.Option(
        "--version", callback=_version, is_eager=True,
        help="Print the version and exit.")] = False) -> None:
    """WaveGlow vocoder."""


# In the order `waveglow --help` lists them.
app.command()(synth)
app.command()(mel)
app.command()(info)
app.command()(convert)
app.command()(fetch)
app.command("list")(list_checkpoints)
app.command()(rm)
app.command()(score)
app.command()(plot)
app.command()(train)
app.command()(bench)
app.command()(serve)
app.command()(compare)
app.command()(export)
for _registered in app.registered_commands:  # each lays out its --help as the group does
    _registered.cls = HelpCommand


def main() -> None:
    """Console entry point; turns anything unexpected into one line (exit 1)."""
    clash = _package_clash()
    if clash is not None:
        stderr_console().out(clash)
        sys.exit(EXIT_INPUT_FAILED)
    try:
        app()
    except KeyboardInterrupt:
        stderr_console().out("interrupted")
        sys.exit(130)
    except Exception as e:  # noqa: BLE001 - last resort: one line, not a traceback
        settings = Settings.from_env()
        stderr_console().out(_last_resort_message(e))
        if settings.debug:
            traceback.print_exception(e, file=sys.stderr)
        sys.exit(EXIT_INPUT_FAILED)


def _package_clash() -> str | None:
    """One line when another distribution installed files into this ``waveglow_cli`` package
    (``waveglow-cli`` on the index ships one too, and pip lets it overwrite ours): whatever
    failed next would not say why."""
    from .._version import DISTRIBUTION, foreign_distribution

    package_dir = Path(__file__).resolve().parent.parent
    owner = foreign_distribution(package_dir)
    if owner is None:
        return None
    other = owner.split()[0]
    return (f"error: {owner}, another distribution, also installed files into {package_dir}; "
            f"it and {DISTRIBUTION} cannot share one environment: pip uninstall {other} "
            f"{DISTRIBUTION}, then pip install {DISTRIBUTION}")


def _last_resort_message(error: BaseException) -> str:
    """One line for an exception no command caught: the file and the system's reason where
    the error names one (an OSError: "out.wav: no space left on device"), else "internal
    error" with the type, so a bug still reads as one."""
    from ..fileio import describe_os_error

    if isinstance(error, WaveGlowError):  # ours: the message names the file already
        return f"error: {error}"
    if isinstance(error, OSError) and error.filename:
        return f"error: {error.filename}: {describe_os_error(error)}"
    if isinstance(error, MemoryError):
        return "error: out of memory" + (f" ({error})" if str(error) else "")
    return (f"error: internal error ({type(error).__name__}: {error}); "
            "set WAVEGLOW_DEBUG=1 for the traceback")
