"""`waveglow compare`: identical files give zero distances, speech against noise large
ones, folders are matched by relative path, and bad inputs are one line each with the usual
exit codes.  In process (typer's runner); the pitch metrics (pyin, the slow part) run in one
test only."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from typer.testing import CliRunner

from waveglow_cli.cli import app

SPEECH = sorted((Path(__file__).parent / "data" / "heldout_speech").glob("*.flac"))
ENV = {"WAVEGLOW_OFFLINE": "1", "COLUMNS": "200"}


def run(*args: str) -> tuple[int, str, str]:
    result = CliRunner().invoke(app, ["compare", *map(str, args)], env=ENV,
                                catch_exceptions=False)
    return result.exit_code, result.stdout, result.stderr


@pytest.fixture
def noise(tmp_path) -> Path:
    rng = np.random.default_rng(0)
    path = tmp_path / "noise.wav"
    sf.write(path, (0.05 * rng.standard_normal(2 * 22050)).astype(np.float32), 22050)
    return path


def test_identical_files_are_zero_apart_in_every_metric():
    code, out, err = run(SPEECH[0], SPEECH[0], "--json")
    assert code == 0, err
    result = json.loads(out)
    (row,) = result["files"]
    for key in ("log_mel_distance", "mcd_db", "f0_rmse_hz", "voicing_error",
                "loudness_diff_db", "length_diff_s"):
        assert row[key] == 0.0, key
    assert result["summary"]["log_mel_distance"] == 0.0 and result["summary"]["files"] == 1
    assert result["missing"] == []


def test_speech_against_noise_is_far(noise):
    code, out, err = run(SPEECH[1], noise, "--json", "--no-f0")
    assert code == 0, err
    row = json.loads(out)["files"][0]
    assert row["log_mel_distance"] > 1.0 and row["mcd_db"] > 3.0
    assert row["f0_rmse_hz"] is None and row["voicing_error"] is None
    code, out, _ = run(SPEECH[1], noise, "--no-f0")  # text: a row and a summary line
    lines = out.splitlines()
    assert len(lines) == 2 and "log-mel" in lines[0] and lines[1].startswith("1 compared")


def test_metrics_of_known_changes():
    """Half the amplitude: -6.02 dB and ln 2 in the log mel, but the same spectral shape (MCD
    leaves out c0); a pitch a semitone off: its F0 difference."""
    from waveglow_cli.analysis.compare import compare_signals

    audio, _ = sf.read(SPEECH[2], dtype="float32")
    half = compare_signals(audio, audio * 0.5, f0=False)
    assert half["loudness_diff_db"] == pytest.approx(-6.0206, abs=1e-3)
    assert half["mcd_db"] < 0.3
    assert 0.5 < half["log_mel_distance"] <= np.log(2) + 1e-4
    t = np.arange(22050) / 22050
    tone = lambda f: (0.3 * np.sin(2 * np.pi * f * t)).astype(np.float32)  # noqa: E731
    pitch = compare_signals(tone(200.0), tone(200.0 * 2 ** (1 / 12)))
    assert pitch["f0_rmse_hz"] == pytest.approx(11.9, abs=2.0)
    assert pitch["voicing_error"] < 0.1


def test_folders_are_matched_by_relative_path(tmp_path, noise):
    ref, gen = tmp_path / "ref", tmp_path / "gen"
    (ref / "sub").mkdir(parents=True)
    (gen / "sub").mkdir(parents=True)
    audio, rate = sf.read(SPEECH[0], dtype="float32")
    sf.write(ref / "a.flac", audio, rate)
    sf.write(gen / "a.wav", audio, rate)                 # another suffix: the same key
    sf.write(ref / "sub" / "b.wav", audio[: rate], rate)
    sf.write(gen / "sub" / "b.wav", audio[: rate] * 0.5, rate)
    sf.write(ref / "c.wav", audio, rate)                 # no counterpart
    code, out, err = run(ref, gen, "--json", "--no-f0")
    assert code == 1
    assert err.count("\n") == 1 and "c.wav: no generated file" in err
    result = json.loads(out)
    assert [r["key"] for r in result["files"]] == ["a", "sub/b"]
    assert result["files"][0]["log_mel_distance"] == 0.0
    assert result["files"][1]["loudness_diff_db"] == pytest.approx(-6.02, abs=0.01)
    assert result["summary"]["files"] == 2 and result["missing"] == [str(ref / "c.wav")]


def test_bad_inputs_are_one_line_each(tmp_path, noise):
    code, _, err = run(tmp_path / "nope.wav", noise)
    assert code == 2 and err == f"error: {tmp_path / 'nope.wav'}: no such file or folder\n"
    code, _, err = run(noise, tmp_path)
    assert code == 2 and "two files or two folders" in err and err.count("\n") == 1
    bad = tmp_path / "bad.wav"
    bad.write_bytes(b"<html>not audio</html>")
    code, out, err = run(bad, noise, "--no-f0")
    assert code == 1 and err.count("\n") == 1 and str(bad) in err
    assert out.startswith("0 compared, 1 failed")
    short = tmp_path / "short.wav"
    sf.write(short, np.zeros(100, dtype=np.float32), 22050)
    code, _, err = run(short, noise, "--no-f0")
    assert code == 1 and "short.wav" in err and "100 samples" in err and err.count("\n") == 1


def test_plot_writes_side_by_side_spectrograms(tmp_path, noise):
    pytest.importorskip("matplotlib")
    code, _, err = run(SPEECH[1], noise, "--no-f0", "--plot", tmp_path / "figs")
    assert code == 0, err
    figure = tmp_path / "figs" / f"{SPEECH[1].stem}.png"
    assert figure.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
