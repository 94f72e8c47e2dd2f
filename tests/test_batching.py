"""Exact batching, chunking and seeded noise: outputs never depend on how the work is split."""

from __future__ import annotations

import math
import shutil
import subprocess
import sys

import numpy as np
import pytest
import soundfile as sf
import torch
from conftest import TINY, run_cli

from waveglow_cli.checkpoints.reader import read_checkpoint
from waveglow_cli.synthesis.plans import (
    BatchOptions,
    Piece,
    context_margin,
    plan_batches,
    plan_pieces,
)
from waveglow_cli.synthesis.synthesizer import SynthesisOptions, Synthesizer

N_MELS = TINY["n_mel_channels"]
LENGTHS = [3, 17, 9, 40, 1, 25, 12, 33, 7, 4]


@pytest.fixture()
def mel_folder(tmp_path):
    """Mels of many lengths, .npy and .pt, in subfolders."""
    rng = np.random.default_rng(11)
    folder = tmp_path / "mels"
    mels = {}
    for i, n in enumerate(LENGTHS):
        mel = rng.normal(size=(N_MELS, n)).astype(np.float32)
        rel = f"{'sub/' if i % 3 == 0 else ''}u{i:02d}"
        path = folder / f"{rel}.{'pt' if i % 2 else 'npy'}"
        path.parent.mkdir(parents=True, exist_ok=True)
        if i % 2:
            torch.save(torch.from_numpy(mel), path)
        else:
            np.save(path, mel)
        mels[rel] = mel
    return folder, mels


def synth_folder(folder, out, checkpoint, *args):
    r = run_cli("synth", folder, "-o", out, "-c", checkpoint, "--subtype", "FLOAT", *args)
    assert r.returncode == 0, r.stderr.decode()
    return {p.relative_to(out).with_suffix("").as_posix(): sf.read(p, dtype="float32")[0]
            for p in out.rglob("*.wav")}


def test_batch_sizes_agree_with_each_other_and_the_reference(tmp_path, mel_folder, tiny_checkpoint,
                                                            tiny_reference):
    folder, mels = mel_folder
    one = synth_folder(folder, tmp_path / "b1", tiny_checkpoint, "--sigma", "0", "--batch-size", "1")
    eight = synth_folder(folder, tmp_path / "b8", tiny_checkpoint, "--sigma", "0", "--batch-size", "8")
    assert sorted(one) == sorted(eight) == sorted(mels)
    for rel, mel in mels.items():
        with torch.no_grad():
            expected = tiny_reference.infer(torch.from_numpy(mel)[None], sigma=0.0)[0].numpy()
        assert eight[rel].shape == (mel.shape[1] * 256,)
        assert np.abs(eight[rel] - one[rel]).max() <= 1e-4, rel
        assert np.abs(eight[rel] - expected).max() <= 1e-4, rel


def test_seeded_noise_does_not_depend_on_batching_or_order(tmp_path, mel_folder, tiny_checkpoint):
    folder, mels = mel_folder
    a = synth_folder(folder, tmp_path / "a", tiny_checkpoint, "--seed", "3", "--batch-size", "1")
    b = synth_folder(folder, tmp_path / "b", tiny_checkpoint, "--seed", "3", "--batch-size", "6",
                     "--max-frames", "20")
    # one file alone, from another folder: its relative path is the same, so is its noise
    single = tmp_path / "single"
    shutil.copytree(folder / "sub", single / "sub")
    c = synth_folder(single, tmp_path / "c", tiny_checkpoint, "--seed", "3")
    for rel in mels:
        assert np.abs(a[rel] - b[rel]).max() <= 1e-4, rel
    for rel in c:
        assert np.abs(a[rel] - c[rel]).max() <= 1e-4, rel
    assert np.abs(a["u02"] - a["u01"][:a["u02"].size]).max() > 1e-2  # items get their own noise


def test_chunked_long_item_equals_whole_item(tiny_checkpoint):
    model = read_checkpoint(tiny_checkpoint).build_model()
    margin = context_margin(model.config)
    mel = np.random.default_rng(5).normal(size=(N_MELS, 90)).astype(np.float32)
    options = SynthesisOptions(sigma=0.6, seed=9)

    def run(max_frames, margin_override=None):
        runner = Synthesizer(model, options, BatchOptions(batch_size=4, max_frames=max_frames))
        if margin_override is not None:
            runner.margin = margin_override
        [(_, audio)] = list(runner.run([("long", mel)]))
        return audio

    whole = run(1000)
    chunked = run(3 * margin)
    assert len(plan_pieces(0, 90, 3 * margin, margin)) > 3
    assert np.abs(chunked - whole).max() <= 1e-4 * max(1.0, np.abs(whole).max())
    # with too little context the seams show: the margin is what makes it exact
    too_little = run(3 * margin, margin_override=1)
    assert np.abs(too_little - whole).max() > 1e-3


def test_margin_covers_the_receptive_field_of_the_published_model():
    from waveglow_cli.model.waveglow import WaveGlowConfig

    # 12 flows x 255 steps x 8 samples + the 1024-sample upsampler kernel, in 256-sample frames
    assert context_margin(WaveGlowConfig()) == math.ceil((12 * 255 * 8 + 1024) / 256) == 100


def test_plans_cover_every_frame_once_and_respect_the_budget():
    pieces = plan_pieces(0, 1000, 300, 40)
    covered = [f for p in pieces for f in range(p.start, p.end)]
    assert covered == list(range(1000))
    assert all(p.frames <= 300 and p.lo == max(0, p.start - 40) for p in pieces)
    items = [Piece(i, 0, n, 0, n) for i, n in enumerate([5, 50, 20, 50, 7, 3])]
    batches = plan_batches(items, BatchOptions(batch_size=3, batch_frames=100))
    assert sorted(p.item for b in batches for p in b) == list(range(6))
    for batch in batches:
        assert len(batch) <= 3 and max(p.frames for p in batch) * len(batch) <= 100
    with pytest.raises(ValueError, match="too small"):
        plan_pieces(0, 1000, 100, 40)


def test_skip_existing_rewrites_nothing(tmp_path, mel_folder, tiny_checkpoint):
    folder, mels = mel_folder
    out = tmp_path / "out"
    synth_folder(folder, out, tiny_checkpoint)
    stamps = {p: (p.stat().st_mtime_ns, p.read_bytes()) for p in out.rglob("*.wav")}
    r = run_cli("synth", folder, "-o", out, "-c", tiny_checkpoint, "--skip-existing")
    assert r.returncode == 0, r.stderr.decode()
    assert r.stderr.decode().strip().splitlines()[-1] == \
        f"written 0, exist 0, skipped {len(mels)}, failed 0"
    assert {p: (p.stat().st_mtime_ns, p.read_bytes()) for p in out.rglob("*.wav")} == stamps
    assert not [p for p in out.rglob("*") if p.name.startswith(".")]  # no temp files left


def test_folder_of_wavs_into_itself_keeps_its_inputs(tmp_path, tiny_checkpoint):
    folder = tmp_path / "wavs"
    folder.mkdir()
    rng = np.random.default_rng(1)
    for name in ("a", "b"):
        sf.write(folder / f"{name}.wav", 0.1 * rng.standard_normal(3000), 22050)
    before = {p.name: p.read_bytes() for p in folder.iterdir()}
    for extra in ([], ["--overwrite"]):
        r = run_cli("synth", folder, "-o", folder, "-c", tiny_checkpoint, *extra)
        assert r.returncode == 2 and b"refusing to overwrite input" in r.stderr
        assert {p.name: p.read_bytes() for p in folder.iterdir()} == before


@pytest.mark.parametrize("scale,convert", [("log10", lambda x: x / math.log(10)),
                                           ("db", lambda x: x * 20 / math.log(10))])
def test_mel_scales_of_other_toolkits(tmp_path, tiny_checkpoint, scale, convert):
    mel = np.random.default_rng(2).normal(size=(N_MELS, 6)).astype(np.float32)
    np.save(tmp_path / "ln.npy", mel)
    np.save(tmp_path / "other.npy", convert(mel).astype(np.float32))
    r = run_cli("synth", tmp_path / "ln.npy", "-o", tmp_path / "a.wav", "-c", tiny_checkpoint,
                "--sigma", "0", "--subtype", "FLOAT")
    assert r.returncode == 0, r.stderr.decode()
    r = run_cli("synth", tmp_path / "other.npy", "-o", tmp_path / "b.wav", "-c", tiny_checkpoint,
                "--sigma", "0", "--subtype", "FLOAT", "--mel-scale", scale)
    assert r.returncode == 0, r.stderr.decode()
    a, b = (sf.read(tmp_path / f"{n}.wav", dtype="float32")[0] for n in "ab")
    assert np.abs(a - b).max() <= 1e-4


def test_torchrun_two_processes_make_the_same_files(tmp_path, mel_folder, tiny_checkpoint):
    folder, mels = mel_folder
    single = synth_folder(folder, tmp_path / "one", tiny_checkpoint, "--seed", "4")
    out = tmp_path / "two"
    import socket

    with socket.socket() as sock:  # a free loopback port for the rendezvous
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2",
           "--master-addr", "127.0.0.1", "--master-port", str(port), "-m", "waveglow_cli", "synth", str(folder), "-o", str(out),
           "-c", str(tiny_checkpoint), "--seed", "4", "--subtype", "FLOAT"]
    r = subprocess.run(cmd, capture_output=True, timeout=300,
                       env={**__import__("os").environ, "OMP_NUM_THREADS": "1"})
    assert r.returncode == 0, r.stderr.decode()[-2000:]
    # each rank did its half
    assert r.stderr.decode().count(f"written {len(mels) // 2}, exist 0, skipped 0, failed 0") == 2
    got = {p.relative_to(out).with_suffix("").as_posix(): sf.read(p, dtype="float32")[0]
           for p in out.rglob("*.wav")}
    assert sorted(got) == sorted(single)
    for rel in single:
        assert np.abs(got[rel] - single[rel]).max() <= 1e-4, rel
