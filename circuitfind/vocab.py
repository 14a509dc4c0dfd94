"""The one normaliser for every user-facing vocabulary: methods, ablations, metrics, tasks,
dtypes, attribution methods, roles.

Convention: canonical names are kebab-case (``eap-ig-inputs``, ``mean-positional``); on input,
case, ``_`` and spaces are ignored (``EAP_IG``, ``mean positional``). Imports nothing heavy.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping

from circuitfind.errors import InputError

__all__ = ["choose", "normalise"]


def normalise(value: str) -> str:
    """``value`` in the spelling convention: stripped, lower case, ``_`` and spaces as ``-``."""
    return str(value).strip().lower().replace("_", "-").replace(" ", "-")


def choose(
    value: str,
    choices: Collection[str],
    aliases: Mapping[str, str] | None = None,
    what: str = "value",
    hint: str = "",
) -> str:
    """``value`` as one of ``choices`` (spelling normalised; ``aliases`` mapped); anything else
    is an ``InputError`` naming the choices.

    Choices may themselves use ``_`` (metric names such as ``logit_diff``): they are matched
    by their normalised spelling and returned as written.
    """
    key = normalise(value)
    by_key = {normalise(c): c for c in choices}
    for alias, target in (aliases or {}).items():
        by_key.setdefault(normalise(alias), target)
    if key not in by_key:
        raise InputError(f"unknown {what} {value!r}; choose one of {', '.join(choices)}{hint}")
    return by_key[key]
