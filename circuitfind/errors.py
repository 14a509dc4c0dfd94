"""Errors that name the problem and the fix. The CLI prints them as one line (exit code 2)."""


class CircuitfindError(Exception):
    """Base class for user-facing errors: bad input, unsupported models, missing files."""


class UnsupportedModelError(CircuitfindError):
    """The model's family has no adapter."""


class ModelLoadError(CircuitfindError):
    """A model source could not be loaded (unreachable hub name, missing directory, ...)."""


class InputError(CircuitfindError):
    """Tokens, prompts or arguments that cannot be used as given."""
