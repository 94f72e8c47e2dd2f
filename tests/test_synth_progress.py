"""Progress within a forward pass.  A file is synthesised in one forward pass,
so a bar that moved only when a file's audio arrived sat at 0 for most of a run.  Every engine
now reports the fraction of a pass done after each flow (an ONNX graph at its end), the
synthesizer turns it into samples, the job into seconds of the job's audio, and the bar shows
the total from its first frame.  No timing assertions: what is checked is what is reported
and shown, in order."""

from __future__ import annotations

import os
import pty
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import read_until_closed

from waveglow_cli.analysis.bench import random_model, synthetic_mel
from waveglow_cli.engines.base import EagerEngine
from waveglow_cli.engines.gpu import GpuEngine
from waveglow_cli.engines.packed import FastWaveGlow
from waveglow_cli.model.waveglow import WaveGlowConfig
from waveglow_cli.synthesis.plans import BatchOptions
from waveglow_cli.synthesis.synthesizer import SynthesisOptions, Synthesizer

CONFIG = WaveGlowConfig(n_mel_channels=6, n_flows=8, n_group=8, n_early_every=4,
                        n_early_size=2, n_layers=4, n_channels=16)
FRAMES = [37, 20, 29]


@pytest.fixture(scope="module")
def model():
    return random_model(CONFIG, seed=5, end_scale=0.3)


def _inputs():
    mel = torch.zeros(len(FRAMES), CONFIG.n_mel_channels, max(FRAMES))
    for b, f in enumerate(FRAMES):
        mel[b, :, :f] = torch.from_numpy(synthetic_mel(CONFIG.n_mel_channels, f, seed=b))
    _, groups, steps = CONFIG.noise_shape(len(FRAMES), max(FRAMES))
    z = torch.randn((len(FRAMES), groups, steps), generator=torch.Generator().manual_seed(1))
    return mel, z, torch.tensor(FRAMES)


# Each engine as the CLI builds it; the packed and GPU engines also split the batch into
# several groups of rows (passes), whose fractions must still follow each other.
ENGINES = {
    "eager": lambda m: EagerEngine(m),
    "packed fp32": lambda m: FastWaveGlow(m, torch.float32),
    "packed fp32, a pass per item": lambda m: FastWaveGlow(m, torch.float32, max_rows=1),
    "packed bf16": lambda m: FastWaveGlow(m, torch.bfloat16),
    "gpu on the cpu": lambda m: GpuEngine(m, "cpu", torch.float32),
    "gpu, a pass per item": lambda m: GpuEngine(m, "cpu", torch.float32, buckets=(80, 160)),
}


@pytest.mark.parametrize("name", ENGINES)
def test_every_engine_reports_increasing_fractions_ending_at_one(model, name):
    engine = ENGINES[name](model)
    mel, z, lengths = _inputs()
    without = engine.infer(mel, 0.7, z, lengths)
    fractions: list[float] = []
    with_progress = engine.infer(mel, 0.7, z, lengths, progress=fractions.append)
    assert torch.equal(without, with_progress)  # reporting changes nothing
    assert len(fractions) >= CONFIG.n_flows  # at least once per flow
    assert all(0 < a < b for a, b in zip(fractions, fractions[1:])), fractions
    assert fractions[-1] == 1.0


def test_the_synthesizer_reports_samples_of_the_batch_as_its_flows_go(model):
    """Long items in pieces, short ones batched: the samples made so far rise within every
    forward pass and end at the audio of all items; the audio is the same as without."""
    items = [(f"m{i}", synthetic_mel(CONFIG.n_mel_channels, f, seed=i))
             for i, f in enumerate((150, 12, 40))]
    batch = BatchOptions(batch_size=2, max_frames=96, batch_frames=200)
    synthesizer = Synthesizer(FastWaveGlow(model, torch.float32), SynthesisOptions(seed=2), batch)
    plain = list(synthesizer.run(items))
    reported: list[int] = []
    blocks = [(key, block) for key, block, _ in synthesizer.stream(items,
                                                                   progress=reported.append)]
    joined = {key: np.concatenate([b for k, b in blocks if k == key]) for key, _ in items}
    assert all(np.array_equal(audio, joined[key]) for key, audio in plain)
    assert all(a < b for a, b in zip(reported, reported[1:])), reported
    assert reported[-1] == sum(synthesizer.samples(mel.shape[1]) for _, mel in items)
    assert len(reported) >= 2 * CONFIG.n_flows  # every flow of more than one forward pass


class Recorder:
    """A JobProgress that keeps every call in order."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, float | None]] = []

    def advance(self, seconds: float | None = None) -> None:
        self.calls.append(("advance", seconds))

    def note(self, text: str) -> None:
        pass

    def failed(self, error: BaseException) -> None:
        self.calls.append(("failed", None))

    def expect(self, seconds: float) -> None:
        self.calls.append(("expect", seconds))

    def produced(self, seconds: float) -> None:
        self.calls.append(("produced", seconds))


def test_a_job_knows_its_total_first_and_reports_audio_within_each_file(tiny_checkpoint):
    from waveglow_cli import load_vocoder
    from waveglow_cli.jobs.core import Item, synthesis_job

    vocoder = load_vocoder(str(tiny_checkpoint), "cpu")
    n_mels = vocoder.config.n_mel_channels
    mels = {"a.npy": synthetic_mel(n_mels, 60, seed=1), "b.npy": synthetic_mel(n_mels, 45, 2)}
    job = synthesis_job(vocoder, SynthesisOptions(seed=0), BatchOptions(batch_size=1),
                        writer=lambda item, target, mel, blocks: sum(map(len, blocks)))
    job.load = lambda source, name: (mels[source.name], [])
    progress = Recorder()
    summary = job.run([Item(Path(key), key) for key in mels], [None, None], progress)
    assert summary.written == 2
    total = sum(vocoder.synthesizer().samples(m.shape[1])
                for m in mels.values()) / vocoder.sample_rate
    kinds = [kind for kind, _ in progress.calls]
    assert progress.calls[0] == ("expect", pytest.approx(total))  # before any audio
    produced = [s for kind, s in progress.calls if kind == "produced"]
    assert produced[-1] == pytest.approx(total)
    assert all(a < b for a, b in zip(produced, produced[1:]))
    # within the first file: several reports before it ends
    assert kinds.index("advance") >= 1 + vocoder.config.n_flows


def test_one_file_on_a_terminal_shows_its_total_at_once_and_moves_within_the_pass(tmp_path):
    """`synth one.npy` with the demo model: one forward pass of the whole file.  Every frame
    of the bar shows the total, and audio seconds strictly between 0 and it are shown."""
    mel = tmp_path / "long.npy"
    np.save(mel, synthetic_mel(80, 520, seed=3))  # 6.0 s at 22050 Hz, hop 256
    leader, follower = pty.openpty()
    proc = subprocess.Popen([sys.executable, "-m", "waveglow_cli", "synth", str(mel), "-o",
                             str(tmp_path / "long.wav"), "-c", "demo"],
                            stderr=follower, stdin=subprocess.DEVNULL, cwd=tmp_path,
                            env={**os.environ, "WAVEGLOW_OFFLINE": "1"})
    os.close(follower)
    shown = read_until_closed(leader)
    assert proc.wait(timeout=300) == 0
    text = shown.decode(errors="replace")
    bars = re.findall(r"([0-9.]+)/([0-9.]+) s of audio", text)
    assert bars, text[-2000:]
    assert {total for _, total in bars} == {"6.0"}  # the total in every frame, the first too
    produced = [float(done) for done, _ in bars]
    assert any(0 < done < 6.0 for done in produced), produced
    assert produced == sorted(produced) and produced[-1] == 6.0
    assert "written 1, exist 0, skipped 0, failed 0 (6.0 s of audio)" in text
