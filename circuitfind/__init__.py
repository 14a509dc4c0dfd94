"""circuitfind: automated circuit discovery for transformer language models."""

from circuitfind.version import __version__

__all__ = ["__version__"]
