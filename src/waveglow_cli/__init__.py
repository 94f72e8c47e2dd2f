"""waveglow-cli: NVIDIA's WaveGlow vocoder as a safe, exact command line tool and library."""

__version__ = "0.1.0"
