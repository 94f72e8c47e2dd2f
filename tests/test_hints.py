"""Hints where a newcomer found none (the second newcomer round and the release round): each
case is provoked through the command line and the message must say what to do or why."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from typer.testing import CliRunner

from waveglow_cli.cli import app

RATE = 22050


@pytest.fixture
def env(tmp_path: Path) -> dict[str, str]:
    return {"WAVEGLOW_HOME": str(tmp_path / "home"), "WAVEGLOW_OFFLINE": "1",
            "WAVEGLOW_REGISTRY": "", "COLUMNS": "200"}


def run(env: dict[str, str], *args: object) -> tuple[int, str, str]:
    result = CliRunner().invoke(app, [str(a) for a in args], env=env, catch_exceptions=False)
    return result.exit_code, result.stdout, result.stderr


def log_mel(bands: int, frames: int) -> np.ndarray:
    return np.random.default_rng(bands + frames).normal(-6.0, 1.5, (bands, frames)).astype(
        np.float32)


def test_a_mel_of_another_band_count_names_the_presets_with_that_many(tmp_path, env):
    np.save(tmp_path / "vocos.npy", log_mel(100, 40))
    code, _, err = run(env, "synth", tmp_path / "vocos.npy", "-c", "demo", "-o",
                       tmp_path / "a.wav")
    assert code == 1 and err.count("\n") == 2, err  # the error and the summary
    line = err.splitlines()[0]
    assert "100 channels" in line and "expects 80" in line
    assert "--mel-from vocos or --mel-from bigvgan-24k" in line
    # The hint works: the same file with the preset named is vocoded.
    code, _, err = run(env, "synth", tmp_path / "vocos.npy", "-c", "demo", "-o",
                       tmp_path / "a.wav", "--mel-from", "vocos", "-q")
    assert code == 0, err
    np.save(tmp_path / "odd.npy", log_mel(60, 40))
    code, _, err = run(env, "synth", tmp_path / "odd.npy", "-c", "demo", "-o",
                       tmp_path / "b.wav")
    assert code == 1 and "--mel-from FILE.toml (no preset has 60 bands)" in err


def test_a_misspelt_preset_gets_did_you_mean(tmp_path, env):
    np.save(tmp_path / "m.npy", log_mel(100, 40))
    code, _, err = run(env, "synth", tmp_path / "m.npy", "-c", "demo", "--mel-from", "vocoss",
                       "-o", tmp_path / "a.wav")
    assert code == 2 and err.count("\n") == 1
    assert "did you mean 'vocos'?" in err and "bigvgan-24k" in err
    code, _, err = run(env, "mel", tmp_path / "m.npy", "--from", "hifigann", "-o",
                       tmp_path / "b.npy")
    assert code == 2 and "did you mean 'hifigan'?" in err
    code, _, err = run(env, "mel", tmp_path / "m.npy", "--from", "zzzz", "-o",
                       tmp_path / "b.npy")
    assert code == 2 and "did you mean" not in err and "use a preset" in err


def test_a_mel_shorter_than_the_models_context_gets_a_note(tmp_path, env):
    """The demo model's context is 20 frames: 1 and 19 frames get the note, 20 does not."""
    for frames in (1, 19, 20):
        np.save(tmp_path / f"m{frames}.npy", log_mel(80, frames))
    code, _, err = run(env, "synth", tmp_path / "m1.npy", tmp_path / "m19.npy",
                       tmp_path / "m20.npy", "-c", "demo", "-o", tmp_path / "out")
    assert code == 0, err
    short = [line for line in err.splitlines() if "context" in line]
    assert len(short) == 2, err
    assert short[0].startswith(f"note: {tmp_path / 'm1.npy'}: only 1 frame (0.012 s of audio)")
    assert "fewer than the model's context of 20 frames" in short[0]
    assert "m19.npy: only 19 frames" in short[1]
    assert sf.info(tmp_path / "out" / "m1.wav").frames == 256  # still written


def test_compare_says_why_there_is_no_f0_rmse(tmp_path, env):
    t = np.arange(RATE) / RATE
    sf.write(tmp_path / "tone.wav", (0.3 * np.sin(2 * np.pi * 200 * t)).astype(np.float32),
             RATE)
    noise = 0.05 * np.random.default_rng(0).standard_normal(RATE)
    sf.write(tmp_path / "noise.wav", noise.astype(np.float32), RATE)
    code, out, err = run(env, "compare", tmp_path / "tone.wav", tmp_path / "noise.wav")
    assert code == 0, err
    row, summary = out.splitlines()
    assert "F0 RMSE n/a (no voiced frames in generated; reference: " in row
    assert "F0 RMSE n/a (no file has a frame voiced in both)" in summary
    code, out, _ = run(env, "compare", tmp_path / "noise.wav", tmp_path / "tone.wav", "--json")
    (result,) = json.loads(out)["files"]
    assert result["f0_rmse_hz"] is None and result["reference_voiced_frames"] == 0
    assert 0 < result["generated_voiced_frames"] <= result["pitch_frames"]
    code, out, _ = run(env, "compare", tmp_path / "noise.wav", tmp_path / "tone.wav")
    assert "F0 RMSE n/a (no voiced frames in reference; generated: " in out
    code, out, _ = run(env, "compare", tmp_path / "tone.wav", tmp_path / "tone.wav")
    assert "F0 RMSE 0.0 Hz\t" in out  # a defined F0 RMSE has no reason


def test_f0_reason_when_both_are_voiced_but_never_at_once():
    from waveglow_cli.analysis.compare import PairResult

    row = PairResult("k", "r.wav", "g.wav", 1.0, 0.0, 1.0, 1.0, None, 0.5, 0.0,
                     pitch_frames=80, reference_voiced_frames=30, generated_voiced_frames=20)
    assert row.f0_missing_reason() == ("no frame voiced in both; voiced: reference 30, "
                                       "generated 20, of 80")
    unmeasured = PairResult("k", "r.wav", "g.wav", 1.0, 0.0, 1.0, 1.0, None, None, 0.0)
    assert unmeasured.f0_missing_reason() == "pitch not measured"


def test_info_says_when_a_model_has_no_early_outputs(tmp_path, env):
    """Four flows with an early output every four leave none."""
    from waveglow_cli.checkpoints.reader import save_checkpoint
    from waveglow_cli.model.waveglow import WaveGlow, WaveGlowConfig

    small = dict(n_mel_channels=4, n_group=8, n_layers=2, n_channels=8, n_early_every=4)
    save_checkpoint(tmp_path / "none.safetensors", WaveGlow(WaveGlowConfig(n_flows=4, **small)))
    save_checkpoint(tmp_path / "one.safetensors", WaveGlow(WaveGlowConfig(n_flows=5, **small)))
    code, out, err = run(env, "info", tmp_path / "none.safetensors")
    assert code == 0, err
    assert "n_early_size: no early outputs" in out
    code, out, _ = run(env, "info", tmp_path / "one.safetensors")
    assert "n_early_size: 2" in out
    code, out, _ = run(env, "info", tmp_path / "none.safetensors", "--json")
    assert json.loads(out)["early_outputs"] == 0


def test_the_demo_is_described_as_unvoiced_and_quieter(env):
    code, out, err = run(env, "info", "demo")
    assert code == 0, err
    description = next(line for line in out.splitlines() if line.startswith("description:"))
    assert "unvoiced" in description and "quieter" in description
    code, out, _ = run(env, "list", "--json")
    (demo,) = [row for row in json.loads(out) if row["name"] == "demo"]
    assert "unvoiced" in demo["description"] and "buzzy" not in demo["description"]
