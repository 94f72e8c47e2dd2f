"""`waveglow score` and `waveglow plot` as a user runs them."""

from __future__ import annotations

import json
import math

import numpy as np
import soundfile as sf
import torch
from conftest import TINY, run_cli


def test_score_json_matches_the_reference_loss(tmp_path, tiny_checkpoint, tiny_reference):
    from waveglow_cli.features.mel import MelConfig, mel_spectrogram

    rng = np.random.default_rng(3)
    clean = (0.2 * np.sin(2 * np.pi * 220 * np.arange(6000) / 22050)).astype(np.float32)
    noisy = clean + 0.3 * rng.standard_normal(6000).astype(np.float32)
    sf.write(tmp_path / "clean.wav", clean, 22050, subtype="FLOAT")
    sf.write(tmp_path / "noisy.wav", noisy, 22050, subtype="FLOAT")
    (tmp_path / "bad.wav").write_text("not audio")
    r = run_cli("score", tmp_path / "clean.wav", tmp_path / "noisy.wav", tmp_path / "bad.wav",
                "-c", tiny_checkpoint, "--json", "--device", "cpu")
    assert r.returncode == 1
    assert "bad.wav" in r.stderr.decode() and "Traceback" not in r.stderr.decode()
    rows = {Path_name(o["file"]): o for o in map(json.loads, r.stdout.decode().splitlines())}
    assert set(rows) == {"clean.wav", "noisy.wav"}
    audio = torch.from_numpy(clean)
    mel = mel_spectrogram(audio, MelConfig(n_mels=TINY["n_mel_channels"]))
    with torch.no_grad():
        z, log_s, log_det = tiny_reference((mel, audio[None]))
    loss = ((z.pow(2).sum() / 2 - sum(t.sum() for t in log_s) - sum(log_det)) / z.numel()).item()
    row = rows["clean.wav"]
    assert math.isclose(row["loss"], loss, rel_tol=1e-4)
    assert math.isclose(row["nll_nats_per_sample"], loss + 0.5 * math.log(2 * math.pi), rel_tol=1e-4)
    assert math.isclose(row["bits_per_sample"], row["nll_nats_per_sample"] / math.log(2), rel_tol=1e-9)
    assert rows["noisy.wav"]["loss"] != row["loss"]


def Path_name(text):
    return text.rsplit("/", 1)[-1]


def test_plot_mel_audio_and_compare(tmp_path, tiny_checkpoint):
    mel = np.random.default_rng(0).normal(-5, 1, size=(80, 50)).astype(np.float32)
    np.save(tmp_path / "m.npy", mel)
    wave = (0.3 * np.sin(2 * np.pi * 300 * np.arange(11025) / 22050)).astype(np.float32)
    sf.write(tmp_path / "a.wav", wave, 22050)
    sf.write(tmp_path / "b.wav", 0.5 * wave, 22050)
    r = run_cli("plot", tmp_path / "m.npy", tmp_path / "a.wav", "-o", tmp_path / "figs")
    assert r.returncode == 0, r.stderr.decode()
    r = run_cli("plot", "--compare", tmp_path / "a.wav", tmp_path / "b.wav", "-o", tmp_path / "c.png")
    assert r.returncode == 0, r.stderr.decode()
    for png in (tmp_path / "figs" / "m.png", tmp_path / "figs" / "a.png", tmp_path / "c.png"):
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    import matplotlib.image

    heights = {p: matplotlib.image.imread(p).shape[0]
               for p in (tmp_path / "figs" / "m.png", tmp_path / "figs" / "a.png", tmp_path / "c.png")}
    # one panel, two panels, four panels
    assert heights[tmp_path / "figs" / "m.png"] < heights[tmp_path / "figs" / "a.png"] \
        < heights[tmp_path / "c.png"]
    r = run_cli("plot", "--compare", tmp_path / "a.wav", "-o", tmp_path / "d.png")
    assert r.returncode == 2 and b"exactly two" in r.stderr


def test_synth_plot_writes_a_figure_beside_each_output(tmp_path, tiny_checkpoint):
    np.save(tmp_path / "m.npy", np.random.default_rng(1).normal(size=(4, 8)).astype(np.float32))
    r = run_cli("synth", tmp_path / "m.npy", "-o", tmp_path / "out.wav", "-c", tiny_checkpoint,
                "--plot")
    assert r.returncode == 0, r.stderr.decode()
    assert (tmp_path / "out.png").read_bytes()[:4] == b"\x89PNG"
