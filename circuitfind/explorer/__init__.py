"""The interactive circuit explorer: one offline HTML file (:func:`write_explorer`) and a local
server that re-evaluates the circuit with nodes or edges ablated (:mod:`.serve`)."""

from __future__ import annotations

from circuitfind.explorer.data import MAX_DRAWN, build_payload, slider_points
from circuitfind.explorer.page import explorer_html, write_explorer

__all__ = ["MAX_DRAWN", "build_payload", "explorer_html", "slider_points", "write_explorer"]
