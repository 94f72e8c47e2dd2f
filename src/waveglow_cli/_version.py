"""The package version (one place: the package and `waveglow --version` read it)."""

__version__ = "0.1.0"
