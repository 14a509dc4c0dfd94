"""Diagrams of dataset-level feature circuits (``FeatureCircuit``) through ``graphviz``.

One row per site in layer order (``embed`` at the bottom, ``metric`` at the top; in sequential
models a layer's MLP site sits above its attention site, as it reads it). Features are ellipses
labelled ``a1.f207`` with their node IE, error nodes grey diamonds, ``embed`` and ``metric``
boxes. Edge width grows with |IE|; blue edges have IE > 0 (ablating the upstream node raises
the downstream one's contribution to the metric), red ones IE < 0. Only the strongest
``max_edges`` edges are drawn, and the legend says how many are left out.
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any

from circuitfind.render import MAX_WIDTH, MIN_WIDTH, write_dot

__all__ = ["draw_feature_circuit", "feature_circuit_dot"]

POSITIVE, NEGATIVE = "#1f77b4", "#d62728"
MAX_FEATURE_EDGES = 80


def _site_key(site: str) -> tuple[int, int]:
    return (int(site[1:]), 0 if site.startswith("a") else 1)


def feature_circuit_dot(fc: Any, *, max_edges: int | None = MAX_FEATURE_EDGES) -> Any:
    """The circuit's ``graphviz.Digraph`` (edges required: ``feature_circuit(edges=True)``)."""
    import graphviz

    from circuitfind.errors import InputError

    if fc.edges is None:
        raise InputError(
            "this feature circuit has no edges to draw: compute them with "
            "feature_circuit(..., edges=True) (the CLI's default; drop --no-edges)"
        )
    edges = fc.top_edges(len(fc.edges) if max_edges is None else max_edges)
    left_out = len(fc.edges) - len(edges)
    nodes = {n for e in edges for n in e[:2]} | set(fc.nodes)
    dot = graphviz.Digraph("feature_circuit")
    dot.attr(rankdir="BT", splines="true", nodesep="0.25", ranksep="0.6", fontname="Helvetica")
    dot.attr("node", fontname="Helvetica", fontsize="10")
    rows: dict[str, list[str]] = {}
    for name in nodes:
        rows.setdefault(name.split(".")[0], []).append(name)
    order = ["embed", *sorted((r for r in rows if r not in ("embed", "metric")), key=_site_key)]
    for i, row in enumerate([*order, "metric"]):
        with dot.subgraph(name=f"rank_{i}") as sub:
            sub.attr(rank="same")
            for name in sorted(rows.get(row, [row])):
                if name in ("embed", "metric"):
                    sub.node(name, name, shape="box", style="filled", fillcolor="#eeeeee")
                    continue
                site, _, rest = name.partition(".")
                if rest == "err":
                    ie = fc.error_scores[site]
                    sub.node(name, f"{name}\n{ie:+.3g}", shape="diamond", style="filled",
                             fillcolor="#cccccc")  # fmt: skip
                else:
                    ie = float(fc.scores[site][int(rest[1:])])
                    sub.node(name, f"{name}\n{ie:+.3g}", shape="ellipse")
    top = max((abs(w) for *_, w in edges), default=1.0) or 1.0
    for u, v, w in edges:
        width = MIN_WIDTH + (MAX_WIDTH - MIN_WIDTH) * math.sqrt(abs(w) / top)
        dot.edge(u, v, color=POSITIVE if w > 0 else NEGATIVE, penwidth=f"{width:.2f}",
                 tooltip=f"{u} -> {v}: IE {w:+.4g}")  # fmt: skip
    f = fc.faithfulness
    lines = [
        f"{fc.meta.get('task', '')} feature circuit: {fc.n_nodes} nodes, "
        f"{len(fc.edges)} edges" + (f", faithfulness {f}" if f is not None else ""),
        "blue: IE > 0, red: IE < 0; width ~ sqrt |IE|",
    ]
    if left_out:
        lines.append(f"the {len(edges)} strongest edges drawn; {left_out} left out")
    dot.attr(label="\n".join(lines), labelloc="b", fontsize="11")
    return dot


def draw_feature_circuit(
    fc: Any, path: str | os.PathLike[str], *, max_edges: int | None = MAX_FEATURE_EDGES
) -> Path:
    """Draw ``fc`` to ``path`` (``.svg``, ``.png``, ``.pdf``, or ``.gv``/``.dot``)."""
    return write_dot(feature_circuit_dot(fc, max_edges=max_edges), path)
