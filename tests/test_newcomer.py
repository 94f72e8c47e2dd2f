"""A newcomer's path: messages only suggest flags the command has.

Every message that names a flag is provoked through the real command line, and each flag it
names must appear in that command's ``--help``.  A flag inside a quoted command
(`waveglow synth MELS -c demo`) belongs to that command, not to the one that was run."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from waveglow_cli.cli import app

_FLAG = re.compile(r"(?:(?<=[\s`(])|^)(--[a-z][a-z0-9-]*|-[a-zA-Z])(?=[\s`),;=]|$)")
_QUOTED_COMMAND = re.compile(r"`waveglow ([a-z]+)([^`]*)`")


def invoke(args: list[str], env: dict[str, str]) -> tuple[int, str]:
    result = CliRunner().invoke(app, args, env=env, catch_exceptions=False)
    return result.exit_code, result.stderr


def help_flags(command: str) -> set[str]:
    result = CliRunner().invoke(app, [command, "--help"], env={"COLUMNS": "200"})
    return set(_FLAG.findall(result.output))


def suggested_flags(command: str, message: str) -> dict[str, set[str]]:
    """{command: the flags the message names for it}."""
    found: dict[str, set[str]] = {}
    for quoted in _QUOTED_COMMAND.finditer(message):
        found.setdefault(quoted.group(1), set()).update(_FLAG.findall(quoted.group(2)))
    rest = _QUOTED_COMMAND.sub("", message)
    found.setdefault(command, set()).update(_FLAG.findall(rest))
    return found


@pytest.fixture()
def where(tmp_path: Path) -> dict[str, object]:
    mel = tmp_path / "x.npy"
    np.save(mel, np.zeros((80, 8), np.float32))
    np.save(tmp_path / "m100.npy", np.zeros((100, 8), np.float32))  # another toolkit's mel
    (tmp_path / "x.wav").write_bytes(b"taken")
    (tmp_path / "x.safetensors").write_bytes(b"taken")
    (tmp_path / "x.png").write_bytes(b"taken")
    import soundfile

    soundfile.write(tmp_path / "a.wav", 0.1 * np.sin(np.arange(8000) / 9.0), 22050)
    (tmp_path / "a.npy").write_bytes(b"taken")
    env = {"WAVEGLOW_HOME": str(tmp_path / "home"), "WAVEGLOW_OFFLINE": "1",
           "WAVEGLOW_REGISTRY": "", "WAVEGLOW_MIRROR": "", "COLUMNS": "200"}
    return {"tmp": tmp_path, "mel": str(mel), "wav": str(tmp_path / "a.wav"), "env": env}


# (command line, what the message is about); {tmp}, {mel} and {wav} are filled in.
CASES = [
    (["fetch", "universal"], "offline fetch of a registry checkpoint"),
    (["fetch", "universal", "--force", "--verify"], "exclusive flags"),
    (["info", "universal"], "offline info of a registry checkpoint"),
    (["convert", "universal", "{tmp}/y.safetensors"], "offline convert"),
    (["convert", "demo", "{tmp}/x.safetensors"], "convert onto an existing output"),
    (["convert", "demo", "{tmp}/y.safetensors", "--dtype", "fp8"], "a bad --dtype"),
    (["synth", "{mel}", "-c", "universal", "-o", "{tmp}/y.wav"], "offline first use"),
    (["synth", "{mel}", "-c", "demo", "-o", "{tmp}/x.wav"], "synth onto an existing output"),
    (["synth", "{mel}", "-c", "demo", "-o", "{tmp}/z.wav", "--overwrite", "--skip-existing"],
     "exclusive flags"),
    (["score", "{mel}", "-c", "universal"], "offline first use"),
    (["bench", "-c", "universal"], "offline first use"),
    (["train", "{tmp}", "-o", "{tmp}/run3", "--from", "universal"], "offline first use"),
    (["mel", "{wav}", "-o", "{tmp}/a.npy"], "mel onto an existing output"),
    (["mel", "{wav}", "-o", "{tmp}/b.npy", "--format", "xx"], "a bad --format"),
    (["mel", "{wav}", "-o", "{tmp}/b.npy", "--format", "pt"], "--format against the suffix"),
    (["train", "{tmp}", "-o", "{tmp}/run", "--lr", "0.001", "--lr-min", "1"], "bad --lr-min"),
    (["plot", "{mel}", "-c", "demo", "-o", "{tmp}/x.png"], "plot onto an existing output"),
    (["synth", "{tmp}/m100.npy", "-c", "demo", "-o", "{tmp}/y.wav"], "a 100-band mel"),
    (["synth", "{mel}", "-c", "demo", "--mel-from", "vocoss", "-o", "{tmp}/y.wav"],
     "a misspelt --mel-from preset"),
]


@pytest.mark.parametrize(("args", "about"), CASES)
def test_every_flag_a_message_suggests_exists_on_that_command(args, about, where):
    line = [a.format(tmp=where["tmp"], mel=where["mel"], wav=where["wav"]) for a in args]
    code, stderr = invoke(line, where["env"])
    if about.endswith("onto an existing output") and args[0] != "convert":
        # a batch job keeps an existing output and says so in one hint: not a failure
        assert code == 0 and "exists already" in stderr, f"{about}: {stderr!r}"
    else:
        assert code != 0, f"{about}: expected a failure, got {stderr!r}"
    assert stderr.strip(), about
    for command, flags in suggested_flags(args[0], stderr).items():
        missing = flags - help_flags(command)
        assert not missing, f"{about}: {stderr.strip()!r} suggests {missing} absent from " \
                            f"`waveglow {command} --help`"


def test_a_fetch_offline_names_demo_a_mirror_and_a_local_file(where):
    code, stderr = invoke(["fetch", "universal"], where["env"])
    assert code == 1 and stderr.count("\n") == 1
    assert "-c demo" in stderr and "WAVEGLOW_MIRROR" in stderr and "-c PATH" in stderr


def test_convert_onto_an_existing_file_suggests_only_overwrite(where):
    code, stderr = invoke(["convert", "demo", f"{where['tmp']}/x.safetensors"], where["env"])
    assert code == 1 and "--overwrite" in stderr and "--skip-existing" not in stderr


def test_the_walker_sees_flags_and_their_commands():
    found = suggested_flags("fetch", "error: x; `waveglow synth MELS -c demo` or --force, -q")
    assert found == {"synth": {"-c"}, "fetch": {"--force", "-q"}}
    assert suggested_flags("mel", "error: a/b-c.wav: 12 -75..-50 dB") == {"mel": set()}


def test_list_never_cuts_a_name_mid_word_at_80_columns(where):
    result = CliRunner().invoke(app, ["list"], env={**where["env"], "COLUMNS": "80"})
    assert result.exit_code == 0
    lines = result.output.splitlines()
    assert all(len(line) <= 80 for line in lines)
    from waveglow_cli.checkpoints.registry import Registry
    from waveglow_cli.settings import Settings

    words = set(re.findall(r"[\w.-]+", result.output))
    for entry in Registry.load(Settings.from_env({})).entries.values():
        assert entry.name in words
        shown = [a for a in entry.aliases if not a.endswith((".pt", ".pth"))]
        assert all(alias in words for alias in shown), (entry.name, shown)


def test_output_exists_hint_names_only_the_flags_given():
    from waveglow_cli.errors import OutputExistsError, OutputExistsHint

    both = OutputExistsHint("a.wav", flags=("--overwrite", "--skip-existing"))
    assert str(both) == str(OutputExistsError("a.wav"))
    only = OutputExistsHint.of(OutputExistsError("a.wav", meanwhile=True), ("--overwrite",))
    assert isinstance(only, OutputExistsError) and only.meanwhile and only.path == "a.wav"
    assert str(only) == "a.wav: output exists (written by another run meanwhile); pass " \
                        "--overwrite to replace it"
    assert str(OutputExistsHint("a.wav", flags=())) == "a.wav: output exists"
