"""waveglow (distributed as waveglow-exact): NVIDIA's WaveGlow vocoder as a safe, exact
command line tool and library.

    from waveglow_cli import load_vocoder, mel_spectrogram
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__all__ = [
    "MelConfig",
    "Vocoder",
    "WaveGlow",
    "WaveGlowConfig",
    "__version__",
    "load_vocoder",
    "mel_spectrogram",
]

if TYPE_CHECKING:
    from ._version import __version__
    from .features.mel import MelConfig, mel_spectrogram
    from .model.waveglow import WaveGlow, WaveGlowConfig
    from .vocoder import Vocoder, load_vocoder

_LAZY = {"load_vocoder": "vocoder", "Vocoder": "vocoder", "mel_spectrogram": "features.mel",
         "MelConfig": "features.mel", "WaveGlow": "model.waveglow",
         "WaveGlowConfig": "model.waveglow",
         "__version__": "_version"}  # read from the installed metadata when asked for


def __getattr__(name: str) -> Any:
    # Imported on first use: `waveglow --help` should not pay for importing torch.
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
