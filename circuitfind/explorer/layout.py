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


def _row_key(graph: Graph, name: str) -> str:
    node = graph.nodes[name]
    if node.kind == "head":
        return f"L{node.layer}"
    if node.kind == "mlp":
        return f"L{node.layer}" if graph.cfg.parallel_attn_mlp else f"L{node.layer}m"
    return name


def _row_label(key: str) -> str:
    if key == "input":
        return "tokens"
    if key == "logits":
        return "output"
    if key.endswith("m"):
        return f"layer {key[1:-1]} MLP"
    return f"layer {key[1:]}"


def layered_layout(
    graph: Graph, names: list[str]
) -> tuple[dict[str, tuple[float, float]], list[Row]]:
    """``({node: (x, y)}, rows)`` for the nodes ``names`` (rows without a node are left out)."""
    order = ["input"]
    for layer in range(graph.cfg.n_layers):
        order.append(f"L{layer}")
        if not graph.cfg.parallel_attn_mlp:
            order.append(f"L{layer}m")
    order.append("logits")
    present = {_row_key(graph, n) for n in names} | {"input", "logits"}
    keys = [k for k in order if k in present]
    n_rows = len(keys)
    y_of = {k: MARGIN + (n_rows - 1 - i) * ROW for i, k in enumerate(keys)}
    n_cols = graph.cfg.n_heads + (1 if graph.cfg.parallel_attn_mlp else 0)
    middle = MARGIN + (graph.cfg.n_heads - 1) * COLUMN / 2
    pos: dict[str, tuple[float, float]] = {}
    for name in names:
        node = graph.nodes[name]
        y = y_of[_row_key(graph, name)]
        if node.kind == "head":
            x = MARGIN + float(node.head or 0) * COLUMN
        elif node.kind == "mlp" and graph.cfg.parallel_attn_mlp:
            x = MARGIN + (n_cols - 1) * COLUMN
        else:
            x = middle
        pos[name] = (round(x, 1), round(y, 1))
    rows = [Row(k, _row_label(k), y_of[k]) for k in keys]
    return pos, rows
