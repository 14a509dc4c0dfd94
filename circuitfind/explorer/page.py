"""The explorer page: one self-contained HTML file (its script and style inline, no CDN, no
network), drawing the payload of :mod:`circuitfind.explorer.data`."""

from __future__ import annotations

import html
import json
import logging
import os
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Any

from circuitfind.explorer.data import build_payload

if TYPE_CHECKING:
    from circuitfind.circuit import Circuit

__all__ = ["ZOOM_BUTTONS", "explorer_html", "page_html", "write_explorer"]

logger = logging.getLogger(__name__)


def _asset(name: str) -> str:
    return (resources.files("circuitfind.explorer") / "assets" / name).read_text(encoding="utf-8")


def _script_json(payload: dict[str, Any]) -> str:
    """JSON that cannot end its ``<script>`` element early."""
    text = json.dumps(payload, separators=(",", ":"), allow_nan=False)
    return text.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")


ZOOM_BUTTONS = """<span><button id="zoom-in" title="zoom in">+</button>
<button id="zoom-out" title="zoom out">−</button>
<button id="zoom-fit" title="fit the diagram">fit</button></span>"""


def page_html(
    payload: dict[str, Any],
    *,
    title: str,
    heading: str,
    toolbar: str,
    after: str = "",
    styles: tuple[str, ...],
    scripts: tuple[str, ...],
) -> str:
    """One explorer page: header, ``toolbar`` (HTML; include :data:`ZOOM_BUTTONS`), legend,
    the diagram (``svg#diagram``) beside ``div#panel``, ``after`` (HTML), the tooltip, the
    payload as JSON in ``#cf-data``, and the assets ``common.css`` / ``common.js`` then
    ``styles`` / ``scripts`` (file names in ``assets/``) inline."""
    css = "\n".join(_asset(n) for n in ("common.css", *styles))
    js = "".join(f"<script>{_asset(n)}</script>\n" for n in ("common.js", *scripts))
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{html.escape(title)}</title>
<style>{css}</style></head>
<body>
<header><h1>{html.escape(heading)}</h1><div class="summary" id="summary"></div></header>
<div id="toolbar">
{toolbar}
</div>
<div id="legend"></div>
<div id="main"><svg id="diagram" xmlns="http://www.w3.org/2000/svg"></svg>
<div id="panel"></div></div>
{after}
<div id="tip"></div>
<script type="application/json" id="cf-data">{_script_json(payload)}</script>
{js}</body></html>
"""


def explorer_html(payload: dict[str, Any], title: str = "") -> str:
    """The page for ``payload``."""
    toolbar = f"""<label>circuit size
<input type="range" id="size" min="0" max="0" step="1" value="0"></label>
<span id="size-label"></span>
<svg id="curve" width="220" height="70" aria-label="faithfulness by circuit size"></svg>
<label><input type="checkbox" id="group"> group heads by role</label>
{ZOOM_BUTTONS}"""
    return page_html(
        payload,
        title=f"circuitfind explorer{': ' + title if title else ''}",
        heading=title or "Circuit",
        toolbar=toolbar,
        after='<div id="tokens"></div>',
        styles=("explorer.css",),
        scripts=("explorer.js",),
    )


def _title(circuit: Circuit) -> str:
    meta = circuit.meta
    return " · ".join(str(meta[k]) for k in ("model", "task", "method") if meta.get(k))


def write_explorer(
    circuit: Circuit,
    path: str | os.PathLike[str],
    *,
    evaluation: Any = None,
    roles: Any = None,
    model: Any = None,
    task: Any = None,
    frequencies: dict[str, float] | None = None,
    serve: bool = False,
) -> Path:
    """Write the interactive explorer of ``circuit`` to ``path`` (one offline HTML file).

    ``evaluation`` (default: ``circuit.meta["evaluation"]``) gives the size slider its
    faithfulness curve; ``roles`` the heads' roles and evidence (default: the circuit's saved
    roles); ``model`` and ``task`` add the example prompts, attention patterns and DLA;
    ``frequencies`` ({edge name: bootstrap frequency}) the edges' opacity.
    """
    circuit = circuit.collapsed()  # a position-aware circuit is drawn with positions merged
    payload = build_payload(
        circuit,
        evaluation=evaluation,
        roles=roles,
        model=model,
        task=task,
        frequencies=frequencies,
        serve=serve,
    )
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(explorer_html(payload, _title(circuit)), encoding="utf-8")
    logger.info("wrote %s (%.0f kB)", path, path.stat().st_size / 1e3)
    return path
