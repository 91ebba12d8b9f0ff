"""edgekit's host side: CLI, models, data, training, optimisation, bundles, transports and reports."""

from ..device import __version__

__all__ = ["__version__"]
