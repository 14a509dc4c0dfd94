"""Circuit diagrams through the ``graphviz`` package: DOT always, SVG/PNG/PDF when ``dot`` exists.

Layout: ``input`` at the bottom, ``logits`` at the top, one rank per layer (a layer's heads side
by side; in sequential models its MLP gets the rank just above, because it reads the heads'
output). Heads are labelled ``L9H6`` and filled by role; edge width grows with |score|; edges
into a head's query, key and value are blue, orange and green; other edges grey; negative
scores are dashed. Only nodes and edges in the circuit are drawn. A legend sits at the bottom.
"""

from __future__ import annotations

import html
import logging
import math
import os
import shutil
from pathlib import Path
from typing import TYPE_CHECKING, Any

from circuitfind.errors import CircuitfindError
from circuitfind.roles import ROLE_COLOURS, ROLES, Role, role_names

if TYPE_CHECKING:
    import graphviz

    from circuitfind.circuit import Circuit

__all__ = [
    "EDGE_COLOURS",
    "FORMATS",
    "NEGATIVE_STYLE",
    "GraphvizNotFoundError",
    "dot_source",
    "render",
]

logger = logging.getLogger(__name__)

FORMATS = ("svg", "png", "pdf", "gv", "dot")
EDGE_COLOURS: dict[str, str] = {"q": "#1f77b4", "k": "#ff7f0e", "v": "#2ca02c", "": "#555555"}
NEGATIVE_STYLE = "dashed"
MIN_WIDTH, MAX_WIDTH = 0.6, 6.0
INSTALL_HINT = (
    "install Graphviz's `dot` (Debian/Ubuntu: apt-get install graphviz; macOS: brew install "
    "graphviz; conda: conda install graphviz)"
)


class GraphvizNotFoundError(CircuitfindError):
    """``dot`` is not installed: only the DOT source could be written."""


def _fmt(x: float) -> str:
    return "nan" if math.isnan(x) else f"{x:.3g}"


def _legend(roles_used: list[str], negative: bool) -> str:
    """An HTML-like graphviz table: role fills, q/k/v colours, the negative style."""
    rows = ['<TR><TD COLSPAN="2"><B>legend</B></TD></TR>']
    for role in roles_used:
        rows.append(
            f'<TR><TD BGCOLOR="{ROLE_COLOURS[role]}" STYLE="rounded"> </TD>'
            f'<TD ALIGN="LEFT">{html.escape(role)}</TD></TR>'
        )
    for key, what in (("q", "query"), ("k", "key"), ("v", "value"), ("", "MLP / logits input")):
        rows.append(
            f'<TR><TD><FONT COLOR="{EDGE_COLOURS[key]}"><B>━━</B></FONT></TD>'
            f'<TD ALIGN="LEFT">{what}</TD></TR>'
        )
    if negative:
        rows.append('<TR><TD>- - -</TD><TD ALIGN="LEFT">negative score</TD></TR>')
    rows.append('<TR><TD COLSPAN="2">width ∝ |score|</TD></TR>')
    return '<<TABLE BORDER="0" CELLBORDER="0" CELLSPACING="2">' + "".join(rows) + "</TABLE>>"


def dot_source(
    circuit: Circuit, *, roles: dict[str, Role] | dict[str, str] | None = None, title: str = ""
) -> graphviz.Digraph:
    """The circuit as a ``graphviz.Digraph`` (nodes and edges in the circuit only)."""
    import graphviz

    g = circuit.graph
    names = role_names(roles)
    role_objs = {k: v for k, v in (roles or {}).items() if isinstance(v, Role)}
    dot = graphviz.Digraph("circuit", engine="dot")
    dot.attr(rankdir="BT", ranksep="0.55", nodesep="0.25", fontname="Helvetica", newrank="true")
    dot.attr("node", shape="box", style="rounded,filled", fontname="Helvetica", fontsize="11")
    dot.attr("edge", arrowsize="0.5")

    nodes = circuit.nodes
    if not nodes:
        nodes = ["input", "logits"]
    node_scores = circuit.node_scores or {}
    roles_used: set[str] = set()
    ranks: dict[str, list[str]] = {}
    for name in nodes:
        node = g.nodes[name]
        attrs: dict[str, str] = {"label": node.label}
        tooltip = [node.name]
        if node.kind == "head":
            role = names.get(name, "unlabelled")
            roles_used.add(role)
            attrs["fillcolor"] = ROLE_COLOURS.get(role, ROLE_COLOURS["unlabelled"])
            if role != "unlabelled":
                attrs["label"] = f"{node.label}\\n{role}"
                tooltip.append(str(role_objs.get(name, role)))
            rank = f"L{node.layer}"
        elif node.kind == "mlp":
            attrs["fillcolor"] = "#e0e0e0"
            attrs["shape"] = "box"
            rank = f"L{node.layer}" if g.cfg.parallel_attn_mlp else f"L{node.layer}m"
        else:
            attrs["fillcolor"] = "#ffffff"
            attrs["penwidth"] = "1.5"
            rank = name
        if name in node_scores:
            tooltip.append(f"score {_fmt(node_scores[name])}")
        attrs["tooltip"] = ", ".join(tooltip)
        dot.node(name, **attrs)
        ranks.setdefault(rank, []).append(name)
    # A column of layer labels, chained by invisible edges, pins the ranks in layer order.
    order = ["input"] + [f"L{x}{m}" for x in range(g.cfg.n_layers) for m in ("", "m")] + ["logits"]
    previous = None
    for rank in [r for r in order if r in ranks]:
        anchor = f"rank_{rank}"
        text = "" if rank in ("input", "logits") else f"layer {rank[1:].rstrip('m')}"
        if rank.endswith("m"):
            text = ""
        dot.node(anchor, label=text, shape="plaintext", style="", fontcolor="#888888")
        if previous is not None:
            dot.edge(previous, anchor, style="invis")
        previous = anchor
        with dot.subgraph() as s:
            s.attr(rank="same")
            for m in [anchor, *ranks[rank]]:
                s.node(m)

    s_idx, r_idx = circuit.in_graph.nonzero(as_tuple=True)
    scores = circuit.score_matrix[s_idx, r_idx]
    finite = scores[~scores.isnan()].abs()
    biggest = float(finite.max()) if len(finite) and float(finite.max()) > 0 else 1.0
    negative = False
    for i, j, score in zip(s_idx.tolist(), r_idx.tolist(), scores.tolist()):
        sender = g.senders[i].name
        recv = g.receivers[j]
        width = MIN_WIDTH
        if not math.isnan(score):
            width = MIN_WIDTH + (MAX_WIDTH - MIN_WIDTH) * abs(score) / biggest
        attrs = {
            "color": EDGE_COLOURS[recv.qkv or ""],
            "penwidth": f"{width:.2f}",
            "tooltip": f"{g.edge_name(i, j)}: {_fmt(score)}",
        }
        if not math.isnan(score) and score < 0:
            attrs["style"] = NEGATIVE_STYLE
            negative = True
        elif math.isnan(score):
            attrs["style"] = "dotted"
        dot.edge(sender, recv.node, **attrs)

    ordered = [r for r in ROLES if r in roles_used]
    legend = _legend(ordered, negative)
    if title:
        legend = legend.replace(
            '<TR><TD COLSPAN="2"><B>legend</B></TD></TR>',
            f'<TR><TD COLSPAN="2"><B>{html.escape(title)}</B></TD></TR>',
        )
    dot.attr(label=legend, labelloc="b", labeljust="l", fontsize="10")
    return dot


def _title(circuit: Circuit) -> str:
    meta = circuit.meta
    parts = [str(meta[k]) for k in ("model", "task", "method") if meta.get(k)]
    head = " · ".join(parts)
    size = f"{circuit.n_edges} of {circuit.graph.n_edges} edges"
    return f"{head} — {size}" if head else size


def render(
    circuit: Circuit,
    path: str | os.PathLike[str],
    *,
    model: Any = None,
    task: Any = None,
    roles: dict[str, Role] | dict[str, str] | None = None,
) -> Path:
    """Draw ``circuit`` to ``path`` (``.svg``, ``.png``, ``.pdf``; ``.gv``/``.dot`` for DOT only).

    The DOT source is always written next to the image (``circuit.gv``). Heads are coloured by
    ``roles`` (``{head: Role or role name}``); when none are given and ``model`` and ``task``
    are, roles are detected with :func:`circuitfind.roles.detect_roles`.

    Returns:
        The path of the rendered file (the ``.gv`` file for DOT output).

    Raises:
        GraphvizNotFoundError: ``dot`` is missing; the message names the ``.gv`` file written
            and how to install Graphviz.
        InputError: an unknown file suffix.
    """
    from circuitfind.errors import InputError

    path = Path(path)
    fmt = path.suffix.lower().lstrip(".")
    if fmt not in FORMATS:
        raise InputError(
            f"cannot render to {path.name!r}: use a file ending in "
            + ", ".join(f".{f}" for f in FORMATS)
        )
    if roles is None and model is not None and task is not None:
        from circuitfind.roles import detect_roles

        heads = [n for n in circuit.nodes if n.startswith("a")]
        roles = detect_roles(model, task, heads=heads) if heads else {}
    dot = dot_source(circuit, roles=roles, title=_title(circuit))
    path.parent.mkdir(parents=True, exist_ok=True)
    gv = path if fmt in ("gv", "dot") else path.with_suffix(".gv")
    gv.write_text(dot.source)
    if gv == path:
        return path
    if shutil.which("dot") is None:
        raise GraphvizNotFoundError(
            f"wrote the DOT source to {gv} but cannot draw {path.name}: {INSTALL_HINT}, then run "
            f"`dot -T{fmt} {gv} -o {path}`"
        )
    path.write_bytes(dot.pipe(format=fmt, quiet=True))
    logger.info("wrote %s and %s", path, gv)
    return path
