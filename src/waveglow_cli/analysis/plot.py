"""Figures around a vocoder: a mel spectrogram, a waveform with its mel, two signals compared.

matplotlib is an optional extra (``pip install 'waveglow-exact[plot]'``); without it the
functions raise :class:`PlotUnavailableError` with that instruction.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from ..errors import PlotUnavailableError
from ..features.mel import MelConfig

__all__ = ["PlotUnavailableError", "plot_signals", "require_matplotlib"]


def require_matplotlib() -> None:
    """Fail early, before a long job, when the plot extra is missing."""
    _pyplot()


def _pyplot():
    try:
        import matplotlib

        matplotlib.use("Agg")  # files only, never a window
        import matplotlib.pyplot as plt
    except ImportError:
        raise PlotUnavailableError() from None
    return plt


# A figure is 1000 pixels wide: a longer signal is drawn from a summary of at most this many
# columns (an hour of audio is 79 million samples and 310 thousand frames; drawn point by
# point it took gigabytes), which looks the same at that width.
MAX_COLUMNS = 4000


def _column_step(count: int) -> int:
    return max(1, -(-count // MAX_COLUMNS))


def _draw_mel(ax, fig, mel: np.ndarray, config: MelConfig, title: str,
              limits: tuple[float, float]) -> None:
    import librosa

    seconds = mel.shape[1] * config.hop_length / config.sample_rate
    step = _column_step(mel.shape[1])
    if step > 1:  # the mean of each group of frames, in the log domain
        usable = mel.shape[1] // step * step
        mel = mel[:, :usable].reshape(mel.shape[0], -1, step).mean(axis=2)
    image = ax.imshow(mel, origin="lower", aspect="auto", cmap="magma", vmin=limits[0],
                      vmax=limits[1], extent=(0.0, seconds, 0, mel.shape[0]))
    freqs = librosa.mel_frequencies(n_mels=mel.shape[0], fmin=config.fmin, fmax=config.fmax_hz)
    ticks = np.linspace(0, mel.shape[0] - 1, 6).round().astype(int)
    ax.set_yticks(ticks + 0.5, [f"{freqs[t]:.0f}" for t in ticks])
    ax.set_ylabel("mel frequency (Hz)")
    ax.set_xlabel("time (s)")
    ax.set_title(title)
    fig.colorbar(image, ax=ax, label="ln magnitude")


def _draw_wave(ax, audio: np.ndarray, sample_rate: int, title: str) -> None:
    step = _column_step(audio.size // 2)
    if step > 1:  # each column's lowest and highest sample: the envelope a plot shows
        usable = audio.size // step * step
        blocks = audio[:usable].reshape(-1, step)
        t = (np.arange(blocks.shape[0]) + 0.5) * step / sample_rate
        ax.fill_between(t, blocks.min(axis=1), blocks.max(axis=1), linewidth=0.5,
                        color="tab:blue")
    else:
        t = np.arange(audio.size) / sample_rate
        ax.plot(t, audio, linewidth=0.5, color="tab:blue")
    ax.set_xlim(0, max((audio.size - 1) / sample_rate, 1e-3))
    ax.set_ylabel("amplitude")
    ax.set_xlabel("time (s)")
    ax.set_title(title)


def plot_signals(path: str | os.PathLike[str], panels: list[tuple[str, np.ndarray, str]],
                 config: MelConfig, *, overwrite: bool = False) -> Path:
    """Write a PNG with one row per panel: ('mel', (n_mels, F) array, title) or
    ('wave', (S,) audio, title).  Written atomically; an existing file is replaced only with
    ``overwrite``."""
    from ..audio.io import atomic_write

    plt = _pyplot()
    mels = [data for kind, data, _ in panels if kind == "mel"]
    # one colour scale for every mel in the figure, so compared panels read alike
    limits = (min(float(m.min()) for m in mels), max(float(m.max()) for m in mels)) if mels \
        else (0.0, 1.0)
    fig, axes = plt.subplots(len(panels), 1, figsize=(10, 3.2 * len(panels)), squeeze=False)
    for ax, (kind, data, title) in zip(axes[:, 0], panels):
        if kind == "mel":
            _draw_mel(ax, fig, data, config, title, limits)
        else:
            _draw_wave(ax, data, config.sample_rate, title)
    fig.tight_layout()
    target = Path(path)
    try:
        atomic_write(target, lambda tmp: fig.savefig(tmp, format="png", dpi=100),
                     overwrite=overwrite)
    finally:
        plt.close(fig)
    return target
