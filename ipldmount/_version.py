"""The package version, low in the layout so every wing may read it."""

__version__ = "0.1.0"
