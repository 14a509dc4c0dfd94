"""The interactive circuit explorer: one offline HTML file (:func:`write_explorer`) and a local
server that re-evaluates the circuit with nodes or edges ablated (:mod:`.serve`).

Imports are lazy, so the CLI's ``serve`` subcommand registers without loading torch."""

from __future__ import annotations

import importlib
from typing import Any

__all__ = ["MAX_DRAWN", "build_payload", "explorer_html", "slider_points", "write_explorer"]

_WHERE = {
    "MAX_DRAWN": "data",
    "build_payload": "data",
    "slider_points": "data",
    "explorer_html": "page",
    "write_explorer": "page",
}


def __getattr__(name: str) -> Any:
    if name not in _WHERE:
        raise AttributeError(f"module 'circuitfind.explorer' has no attribute {name!r}")
    return getattr(importlib.import_module(f"circuitfind.explorer.{_WHERE[name]}"), name)
