"""Where each node of the explorer's diagram sits: a layered layout computed in Python.

Rows from the bottom: ``input`` (tokens), then for each layer its heads and, in sequential
models, the row of its MLP just above (parallel models put the MLP beside the heads, as the
static diagram of :mod:`circuitfind.render` does), then ``logits`` at the top. Within a row a
head sits in the column of its head index, so a column reads as "head H of every layer"; MLPs,
``input`` and ``logits`` sit in the middle. Coordinates are in SVG user units, y growing down.
"""

from __future__ import annotations

from dataclasses import dataclass

from circuitfind.graph import Graph
from circuitfind.render import row_key, row_label, row_order

__all__ = ["COLUMN", "ROW", "Row", "layered_layout"]

COLUMN = 90.0  # horizontal distance between head columns
ROW = 80.0  # vertical distance between rows
MARGIN = 60.0


@dataclass(frozen=True)
class Row:
    """One row of the diagram: its key (``input``, ``L3``, ``L3m``, ``logits``), label, y."""

    key: str
    label: str
    y: float


def layered_layout(
    graph: Graph, names: list[str]
) -> tuple[dict[str, tuple[float, float]], list[Row]]:
    """``({node: (x, y)}, rows)`` for the nodes ``names`` (rows without a node are left out)."""
    present = {row_key(graph, n) for n in names} | {"input", "logits"}
    keys = [k for k in row_order(graph) if k in present]
    n_rows = len(keys)
    y_of = {k: MARGIN + (n_rows - 1 - i) * ROW for i, k in enumerate(keys)}
    n_cols = graph.cfg.n_heads + (1 if graph.cfg.parallel_attn_mlp else 0)
    middle = MARGIN + (graph.cfg.n_heads - 1) * COLUMN / 2
    pos: dict[str, tuple[float, float]] = {}
    for name in names:
        node = graph.nodes[name]
        y = y_of[row_key(graph, name)]
        if node.kind == "head":
            x = MARGIN + float(node.head or 0) * COLUMN
        elif node.kind == "mlp" and graph.cfg.parallel_attn_mlp:
            x = MARGIN + (n_cols - 1) * COLUMN
        else:
            x = middle
        pos[name] = (round(x, 1), round(y, 1))
    rows = [Row(k, row_label(k), y_of[k]) for k in keys]
    return pos, rows
