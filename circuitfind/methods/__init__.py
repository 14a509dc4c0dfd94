"""Scoring methods: one module each, one row each in :mod:`circuitfind.methods.table`.

Every method function is ``fn(runs: PreparedRuns, **options) -> Scores`` (see the table's
docstring). Importing this package imports no torch; the functions load on first use.
"""

from __future__ import annotations

from typing import Any

from circuitfind.methods.table import (
    METHODS,
    MethodSpec,
    method_name,
    method_options,
    method_spec,
    register,
    unregister,
)

__all__ = [
    "METHODS",
    "MethodSpec",
    "method_name",
    "method_options",
    "method_spec",
    "register",
    "unregister",
]


def __getattr__(name: str) -> Any:
    """The method functions by name (``score_exact``, ``score_eap``, ...), imported lazily."""
    for spec in METHODS.values():
        if isinstance(spec.fn, str) and spec.fn.endswith(":" + name):
            return spec.function()
    raise AttributeError(f"module 'circuitfind.methods' has no attribute {name!r}")
