"""Errors that name the problem and the fix. The CLI prints them as one line (exit code 2)."""

from collections.abc import Collection


class CircuitfindError(Exception):
    """Base class for user-facing errors: bad input, unsupported models, missing files."""


class UnsupportedModelError(CircuitfindError):
    """The model's family has no adapter."""


class ModelLoadError(CircuitfindError):
    """A model source could not be loaded (unreachable hub name, missing directory, ...)."""


class InputError(CircuitfindError):
    """Tokens, prompts or arguments that cannot be used as given."""


def choose(
    value: str, choices: Collection[str], aliases: dict[str, str], what: str, hint: str = ""
) -> str:
    """``value`` as one of ``choices`` (case, ``_`` and spaces ignored; ``aliases`` mapped);
    anything else is an ``InputError`` naming the choices."""
    key = str(value).strip().lower().replace("_", "-").replace(" ", "-")
    key = aliases.get(key, key)
    if key not in choices:
        raise InputError(f"unknown {what} {value!r}; choose one of {', '.join(choices)}{hint}")
    return key
