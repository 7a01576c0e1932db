"""mor — Mixture of Reflection: route each input to the experts that fit it, let each expert reflect
until it is confident, and integrate their answers."""

from mor.errors import CheckpointError, ConfigError, MorError, ShapeError

__all__ = ["CheckpointError", "ConfigError", "MorError", "ShapeError"]
__version__ = "0.1.0"
