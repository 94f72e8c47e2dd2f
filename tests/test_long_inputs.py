"""Long inputs in bounded memory: read, noised, synthesised, denoised and written piece by piece.

The README promises bounded memory for arbitrarily long files; a one-hour mel took 1.4 GB
with a toy model and a ten-hour one ~12 GB, because the whole item's noise, audio and encoded
file were held at once.  These tests measure peak memory in a subprocess and check that the
piecewise path gives what the whole-item path gives.
"""

from __future__ import annotations

import os
import resource
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import soundfile as sf
import torch

from waveglow_cli.audio.out import write_audio_blocks
from waveglow_cli.errors import SynthesisError
from waveglow_cli.features.mel import STFT
from waveglow_cli.model.waveglow import WaveGlow, WaveGlowConfig
from waveglow_cli.synthesis.denoiser import StreamingDenoiser
from waveglow_cli.synthesis.noise import NOISE_BLOCK_STEPS, noise_steps
from waveglow_cli.synthesis.plans import BatchOptions
from waveglow_cli.synthesis.synthesizer import SynthesisOptions, Synthesizer

# 80 mels and the real hop: the per-frame costs are those of real mels; tiny elsewhere (fast).
MINI80 = WaveGlowConfig(n_mel_channels=80, n_flows=2, n_group=8, n_early_every=4,
                        n_early_size=2, n_layers=1, n_channels=4, kernel_size=3,
                        upsample_kernel=512)


@pytest.fixture(scope="module")
def mini80_checkpoint(tmp_path_factory):
    from waveglow_cli.checkpoints.reader import save_checkpoint

    torch.manual_seed(0)
    model = WaveGlow(MINI80)
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.mul_(0.05)
    return save_checkpoint(tmp_path_factory.mktemp("mini80") / "mini80.safetensors", model)


def peak_rss_mib(*args: object) -> tuple[int, subprocess.CompletedProcess]:
    """Run the CLI in a fresh wrapper process; the wrapper's RUSAGE_CHILDREN maximum is the
    CLI's own peak resident memory (nothing else ran under it)."""
    wrapper = textwrap.dedent("""
        import json, resource, subprocess, sys
        r = subprocess.run([sys.executable, "-m", "waveglow_cli", *sys.argv[1:]], capture_output=True)
        peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
        print(json.dumps([r.returncode, peak, r.stderr.decode()]))
    """)
    r = subprocess.run([sys.executable, "-c", wrapper, *map(str, args)], capture_output=True,
                       timeout=600, env={**os.environ, "WAVEGLOW_OFFLINE": "1"})
    import json

    code, peak_kib, stderr = json.loads(r.stdout)
    scale = 1 if sys.platform.startswith("linux") else 1024  # macOS reports bytes
    return peak_kib // scale // 1024, subprocess.CompletedProcess(args, code, b"", stderr.encode())


@pytest.mark.skipif(not hasattr(resource, "getrusage"), reason="needs resource.getrusage")
def test_memory_does_not_grow_with_the_length_of_a_mel(tmp_path, mini80_checkpoint):
    """A 20x longer mel (2,000 vs 40,000 frames, 23 s vs 7.7 min of audio) must not take more
    memory beyond a generous 150 MB; before, the 40,000-frame one took 3.4 GB more."""
    rng = np.random.default_rng(0)
    peaks = {}
    for name, frames in (("short", 2_000), ("long", 40_000)):
        np.save(tmp_path / f"{name}.npy", rng.normal(-5, 1, size=(80, frames)).astype(np.float32))
        peak, r = peak_rss_mib("synth", tmp_path / f"{name}.npy", "-o", tmp_path / f"{name}.wav",
                               "-c", mini80_checkpoint, "--seed", "1", "--device", "cpu")
        assert r.returncode == 0, r.stderr.decode()
        assert sf.info(tmp_path / f"{name}.wav").frames == frames * 256
        peaks[name] = peak
    assert peaks["long"] - peaks["short"] < 150, peaks


def test_noise_is_position_indexed_in_blocks():
    """Any slice of an item's noise is the same numbers however the pieces are cut, so seeded
    results do not depend on --max-frames; different items get different noise."""
    seed = 1234
    total = 3 * NOISE_BLOCK_STEPS + 517
    whole = noise_steps(seed, 8, 0, total)
    assert whole.shape == (8, total)
    for lo, hi in ((0, 1), (5, NOISE_BLOCK_STEPS + 9), (NOISE_BLOCK_STEPS, 2 * NOISE_BLOCK_STEPS),
                   (total - 100, total)):
        assert torch.equal(noise_steps(seed, 8, lo, hi), whole[:, lo:hi])
    assert not torch.equal(noise_steps(seed + 1, 8, 0, 64), whole[:, :64])
    assert abs(float(whole.std()) - 1.0) < 0.02


def test_streaming_denoiser_equals_denoising_the_whole_signal():
    """The denoiser works on pieces as they arrive; with hop-aligned context on both sides
    the result equals denoising the whole signal (to 1e-5), whatever the block sizes."""
    stft = STFT(1024, 256, 1024)
    bias = torch.rand(stft.n_freqs, 1) * 0.3
    rng = np.random.default_rng(7)
    audio = (0.3 * rng.standard_normal(256 * 97)).astype(np.float32)

    def denoise(x: torch.Tensor, strength: float) -> torch.Tensor:
        return stft.denoise(x, bias, strength)

    whole = denoise(torch.from_numpy(audio)[None], 0.7)[0].numpy()
    for sizes in ([256 * 97], [256 * 10] * 9 + [256 * 7], [1000, 5000, 77, 256 * 40, 9000]):
        streamer = StreamingDenoiser(denoise, 0.7, audio.size, torch.device("cpu"))
        out, start = [], 0
        for size in sizes + [audio.size]:
            block = audio[start:start + size]
            start += block.size
            if block.size:
                piece = streamer.push(block)
                if piece is not None:
                    out.append(piece)
        joined = np.concatenate(out)
        assert joined.shape == whole.shape
        assert np.abs(joined - whole).max() <= 1e-5, sizes
        assert streamer.buffer.size <= max(sizes) + 3 * streamer.context


def test_stream_hands_on_each_item_in_order_and_equals_whole(tmp_path):
    """Synthesizer.stream: each item's events are contiguous, end with done, and join into
    what whole (unchunked) synthesis gives, also with the denoiser on."""
    from waveglow_cli.synthesis.denoiser import Denoiser

    torch.manual_seed(1)
    config = WaveGlowConfig(n_mel_channels=4, n_flows=4, n_group=8, n_early_every=2,
                            n_early_size=2, n_layers=2, n_channels=8, upsample_kernel=512)
    model = WaveGlow(config).eval()
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.mul_(0.2)
    rng = np.random.default_rng(2)
    mels = [(f"k{i}", rng.normal(size=(4, n)).astype(np.float32)) for i, n in enumerate((70, 7, 45))]
    options = SynthesisOptions(sigma=0.6, seed=3, denoiser_strength=0.2)
    denoiser = Denoiser.for_model(model)
    whole = dict(Synthesizer(model, options, BatchOptions(max_frames=1000), denoiser).run(mels))
    chunked = Synthesizer(model, options, BatchOptions(batch_size=3, max_frames=16), denoiser)
    events = list(chunked.stream(mels))
    keys = [key for key, _, _ in events]
    assert sorted(set(keys)) == ["k0", "k1", "k2"]
    runs = [key for i, key in enumerate(keys) if i == 0 or keys[i - 1] != key]
    assert len(runs) == 3  # no item's events interleave with another's
    for key, _ in mels:
        blocks = [block for k, block, _ in events if k == key]
        assert [done for k, _, done in events if k == key][-1] is True
        assert sum(done for k, _, done in events if k == key) == 1
        assert len(blocks) > 1 or key == "k1"
        joined = np.concatenate(blocks)
        assert joined.shape == whole[key].shape
        assert np.abs(joined - whole[key]).max() <= 1e-4 * max(1.0, np.abs(whole[key]).max())


def test_a_non_finite_block_publishes_nothing(tmp_path):
    """Blocks are checked as they are written: a NaN in the last block fails the file, its
    temporary file is removed and nothing appears under the target name."""
    target = tmp_path / "out.wav"
    blocks = [np.zeros(1000, np.float32), np.array([0.1, np.nan], np.float32)]
    with pytest.raises(SynthesisError, match="NaN/inf"):
        write_audio_blocks(target, iter(blocks), 22050, "PCM_16", name="item.npy")
    assert list(tmp_path.iterdir()) == []
    n = write_audio_blocks(target, iter([np.full(700, 2.0, np.float32), np.zeros(300, np.float32)]),
                           22050, "PCM_16")
    audio, _ = sf.read(target, dtype="float32")
    assert n == 1000 and audio.shape == (1000,) and audio.max() <= 1.0  # clipped per block
