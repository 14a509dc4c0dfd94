"""Circuit diagrams through the ``graphviz`` package: DOT always, SVG/PNG/PDF when ``dot`` exists.

Layout: ``input`` at the bottom, ``logits`` at the top, one rank per layer (a layer's heads side
by side; in sequential models its MLP gets the rank just above, because it reads the heads'
output); every row is labelled (``layer 3``, ``layer 3 MLP``). Heads are labelled ``L9H6`` and
filled by role; edge width grows with |score|; edges into a head's query, key and value are
blue, orange and green; other edges grey.

Solid edges help the task, dashed ones hurt it. Helpfulness is the score times the circuit's
``meta["score_orientation"]`` (+1 or -1, set by discover: scores are "metric with the edge
ablated minus clean", so for a metric that ablation lowers, the important edges have negative
scores); without one, the saved metrics decide; where nothing says which sign helps, every
edge is drawn solid and the legend says so (a negative score is no sign of hurting).

Only nodes and edges in the circuit are drawn; a circuit of more than ``MAX_EDGES`` edges is
drawn with its strongest ``MAX_EDGES`` (by |score|) and the legend says how many are left out.
PNG output is capped at ``MAX_PNG_INCHES`` x ``PNG_DPI`` pixels a side. A legend sits at the
bottom.
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
    "HURTS_STYLE",
    "MAX_EDGES",
    "NEGATIVE_STYLE",
    "GraphvizNotFoundError",
    "dot_source",
    "drawn_edges",
    "edge_opacity",
    "helpfulness_sign",
    "render",
    "row_key",
    "row_label",
    "row_order",
    "write_dot",
]

logger = logging.getLogger(__name__)

FORMATS = ("svg", "png", "pdf", "gv", "dot")
EDGE_COLOURS: dict[str, str] = {"q": "#1f77b4", "k": "#ff7f0e", "v": "#2ca02c", "": "#555555"}
HURTS_STYLE = "dashed"
NEGATIVE_STYLE = HURTS_STYLE  # the former name (edges that hurt the task)
MIN_WIDTH, MAX_WIDTH = 0.6, 6.0
MAX_EDGES = 150  # more than a person can follow in one picture
MAX_PNG_INCHES, PNG_DPI = 40, 96  # PNGs at most 3840 px a side
INSTALL_HINT = (
    "install Graphviz's `dot` (Debian/Ubuntu: apt-get install graphviz; macOS: brew install "
    "graphviz; conda: conda install graphviz)"
)


class GraphvizNotFoundError(CircuitfindError):
    """``dot`` is not installed: only the DOT source could be written."""


def _fmt(x: float) -> str:
    return "nan" if math.isnan(x) else f"{x:.3g}"


def helpfulness_sign(circuit: Circuit) -> float | None:
    """+1 or -1: ``sign * score > 0`` for an edge that helps the task; None when unknown.

    From ``meta["score_orientation"]`` (discover sets it), else ``score_kind`` "helps-positive",
    else from the metrics it saved (``metrics`` or ``evaluation``: the empty circuit's metric
    above the full model's means ablation raises the metric, so helpful edges have positive
    scores), else None."""
    meta = circuit.meta
    orientation = meta.get("score_orientation")
    if isinstance(orientation, (int, float)) and orientation != 0:
        return 1.0 if orientation > 0 else -1.0
    if meta.get("score_kind") == "helps-positive":
        return 1.0
    metrics = meta.get("metrics") or {}
    saved = meta.get("evaluation")
    evaluation: dict[str, Any] = saved if isinstance(saved, dict) else {}
    full = metrics.get("full", evaluation.get("metric_full"))
    empty = metrics.get("empty", evaluation.get("metric_empty"))
    if isinstance(full, (int, float)) and isinstance(empty, (int, float)):
        return 1.0 if empty >= full else -1.0
    return None


def drawn_edges(
    circuit: Circuit, max_edges: int | None = MAX_EDGES
) -> tuple[list[tuple[int, int, float]], int]:
    """The circuit's edges to draw, strongest |score| first where there are more than
    ``max_edges`` (NaN scores last), as ``(sender index, receiver index, score)``; and how many
    were left out. (A position-aware circuit counts its (edge, column) terms.)"""
    if circuit.positions is not None:
        terms = int(circuit.in_graph.sum())
        left = 0 if max_edges is None else max(0, terms - max_edges)
        return [], left
    s_idx, r_idx = circuit.in_graph.nonzero(as_tuple=True)
    scores = circuit.score_matrix[s_idx, r_idx]
    edges = list(zip(s_idx.tolist(), r_idx.tolist(), scores.tolist()))
    if max_edges is None or len(edges) <= max_edges:
        return edges, 0
    edges.sort(key=lambda e: -1.0 if math.isnan(e[2]) else -abs(e[2]))
    kept = sorted(edges[:max_edges], key=lambda e: (e[0], e[1]))
    return kept, len(edges) - max_edges


def _legend(
    roles_used: list[str], sign: float | None, styles: set[str], left_out: int, total: int
) -> str:
    """An HTML-like graphviz table: role fills, q/k/v colours, what solid and dashed mean."""
    rows = ['<TR><TD COLSPAN="2"><B>legend</B></TD></TR>']
    if left_out:
        rows.append(
            f'<TR><TD COLSPAN="2"><B>showing the {total - left_out} strongest of {total} edges '
            f"(by |score|); {left_out} left out, all in circuit.json</B></TD></TR>"
        )
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
    if sign is not None:
        rows.append(
            '<TR><TD>━━</TD><TD ALIGN="LEFT">helps the task (ablating it moves the metric '
            "toward the empty circuit's)</TD></TR>"
        )
        if "hurts" in styles:
            rows.append(
                '<TR><TD>- - -</TD><TD ALIGN="LEFT">hurts the task (ablating it moves the metric '
                "away from the empty circuit's)</TD></TR>"
            )
    elif "unknown" in styles:
        rows.append(
            '<TR><TD>━━</TD><TD ALIGN="LEFT">all edges solid: the circuit does not record which '
            "score sign helps the task (tooltips give the signed score)</TD></TR>"
        )
    if "nan" in styles:
        rows.append('<TR><TD>· · ·</TD><TD ALIGN="LEFT">not scored</TD></TR>')
    if "by-pattern" in styles:
        rows.append(
            '<TR><TD>role?</TD><TD ALIGN="LEFT">by pattern only: far from the layers its paper '
            "found it in, and no circuit edge confirms it</TD></TR>"
        )
    rows.append('<TR><TD COLSPAN="2">width ∝ |score|</TD></TR>')
    return '<<TABLE BORDER="0" CELLBORDER="0" CELLSPACING="2">' + "".join(rows) + "</TABLE>>"


MIN_OPACITY = 0.15  # an edge the resamples never kept stays visible


def edge_opacity(circuit: Circuit) -> Any:
    """[S, R] opacity per edge = its bootstrap inclusion frequency (``meta["stability"]``,
    floored at :data:`MIN_OPACITY`), or None when the circuit has no bootstrap."""
    from circuitfind.stability import frequency_matrix

    freq = frequency_matrix(circuit)
    return None if freq is None else freq.clamp(min=MIN_OPACITY)


def _fade(attrs: dict[str, str], opacity: Any, i: int, j: int) -> None:
    """Edge ``(i, j)``'s colour with its opacity as the alpha channel, and the frequency in
    its tooltip."""
    if opacity is None:
        return
    alpha = float(opacity[i, j])
    attrs["color"] = f"{attrs['color']}{round(255 * alpha):02x}"
    attrs["tooltip"] += (
        f"; kept in {alpha:.0%} of resamples"
        if alpha > MIN_OPACITY
        else (f"; kept in at most {MIN_OPACITY:.0%} of resamples")
    )


def _opacity_row(circuit: Circuit) -> str:
    st = circuit.meta.get("stability") or {}
    if not st:
        return ""
    return (
        f'<TR><TD COLSPAN="2">opacity = share of {st.get("n_boot", "?")} bootstrap resamples '
        "keeping the edge</TD></TR>"
    )


def row_key(graph: Any, name: str) -> str:
    """The diagram row of node ``name``: ``input``, ``L3`` (layer 3's heads, and its MLP when
    attention and MLP run in parallel), ``L3m`` (layer 3's MLP), ``logits``."""
    node = graph.nodes[name]
    if node.kind == "head":
        return f"L{node.layer}"
    if node.kind == "mlp":
        return f"L{node.layer}" if graph.cfg.parallel_attn_mlp else f"L{node.layer}m"
    return name


def row_order(graph: Any) -> list[str]:
    """Every row key, bottom (``input``) to top (``logits``)."""
    rows = [f"L{x}{m}" for x in range(graph.cfg.n_layers) for m in ("", "m")]
    if graph.cfg.parallel_attn_mlp:
        rows = [r for r in rows if not r.endswith("m")]
    return ["input", *rows, "logits"]


def row_label(rank: str) -> str:
    """The label of a row of the diagram: ``tokens``, ``layer 3``, ``layer 3 MLP``, ``output``."""
    if rank == "input":
        return "tokens"
    if rank == "logits":
        return "output"
    if rank.endswith("m"):
        return f"layer {rank[1:-1]} MLP"
    return f"layer {rank[1:]}"


def dot_source(
    circuit: Circuit,
    *,
    roles: dict[str, Role] | dict[str, str] | None = None,
    title: str = "",
    max_edges: int | None = MAX_EDGES,
) -> graphviz.Digraph:
    """The circuit as a ``graphviz.Digraph``: its nodes and edges only, at most ``max_edges``
    edges (the strongest; ``None`` for all), the nodes those edges touch. A position-aware
    circuit is drawn by :func:`positional_dot_source` (one column a position or span)."""
    import graphviz

    if circuit.positions is not None:
        return positional_dot_source(circuit, roles=roles, title=title, max_edges=max_edges)
    g = circuit.graph
    names = role_names(roles)
    role_objs = {k: v for k, v in (roles or {}).items() if isinstance(v, Role)}
    dot = graphviz.Digraph("circuit", engine="dot")
    dot.attr(rankdir="BT", ranksep="0.55", nodesep="0.25", fontname="Helvetica", newrank="true")
    dot.attr("node", shape="box", style="rounded,filled", fontname="Helvetica", fontsize="11")
    dot.attr("edge", arrowsize="0.5")

    edges, left_out = drawn_edges(circuit, max_edges)
    if left_out:
        touched = {g.senders[i].name for i, _, _ in edges} | {
            g.receivers[j].node for _, j, _ in edges
        }
        nodes = [n for n in circuit.nodes if n in touched]
    else:
        nodes = circuit.nodes
    if not nodes:
        nodes = ["input", "logits"]
    node_scores = circuit.node_scores or {}
    roles_used: set[str] = set()
    styles: set[str] = set()
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
                obj = role_objs.get(name)
                attrs["label"] = f"{node.label}\\n{obj.label if obj else role}"
                tooltip.append(str(obj or role))
                if obj is not None and obj.note:
                    tooltip.append(obj.note)
                if obj is not None and obj.by_pattern_only:
                    styles.add("by-pattern")
        elif node.kind == "mlp":
            attrs["fillcolor"] = "#e0e0e0"
            attrs["shape"] = "box"
        else:
            attrs["fillcolor"] = "#ffffff"
            attrs["penwidth"] = "1.5"
        rank = row_key(g, name)
        if name in node_scores:
            tooltip.append(f"score {_fmt(node_scores[name])}")
        attrs["tooltip"] = ", ".join(tooltip)
        dot.node(name, **attrs)
        ranks.setdefault(rank, []).append(name)
    # A column of row labels, chained by invisible edges, pins the ranks in layer order.
    order = row_order(g)
    previous = None
    for rank in [r for r in order if r in ranks]:
        anchor = f"rank_{rank}"
        dot.node(anchor, label=row_label(rank), shape="plaintext", style="", fontcolor="#888888")
        if previous is not None:
            dot.edge(previous, anchor, style="invis")
        previous = anchor
        with dot.subgraph() as s:
            s.attr(rank="same")
            for m in [anchor, *ranks[rank]]:
                s.node(m)

    finite = [abs(x) for _, _, x in edges if not math.isnan(x)]
    biggest = max(finite) if finite and max(finite) > 0 else 1.0
    sign = helpfulness_sign(circuit)
    opacity = edge_opacity(circuit)
    for i, j, score in edges:
        sender = g.senders[i].name
        recv = g.receivers[j]
        width = MIN_WIDTH
        if not math.isnan(score):
            width = MIN_WIDTH + (MAX_WIDTH - MIN_WIDTH) * abs(score) / biggest
        attrs = {
            "color": EDGE_COLOURS[recv.qkv or ""],
            "penwidth": f"{width:.2f}",
        }
        if math.isnan(score):
            attrs["style"] = "dotted"
            styles.add("nan")
            effect = "not scored"
        elif sign is None:  # which sign helps is unknown: no edge is drawn as hurting
            styles.add("unknown")
            effect = "sign of help unknown"
        elif score * sign < 0:
            attrs["style"] = HURTS_STYLE
            styles.add("hurts")
            effect = "hurts the task"
        else:
            effect = "helps the task"
        attrs["tooltip"] = f"{g.edge_name(i, j)}: {_fmt(score)} ({effect})"
        _fade(attrs, opacity, i, j)
        dot.edge(sender, recv.node, **attrs)

    ordered = [r for r in ROLES if r in roles_used]
    legend = _legend(ordered, sign, styles, left_out, circuit.n_edges)
    legend = legend.replace("</TABLE>>", _opacity_row(circuit) + "</TABLE>>")
    if title:
        legend = legend.replace(
            '<TR><TD COLSPAN="2"><B>legend</B></TD></TR>',
            f'<TR><TD COLSPAN="2"><B>{html.escape(title)}</B></TD></TR>',
        )
    dot.attr(label=legend, labelloc="b", labeljust="l", fontsize="10")
    return dot


def positional_dot_source(
    circuit: Circuit,
    *,
    roles: dict[str, Role] | dict[str, str] | None = None,
    title: str = "",
    max_edges: int | None = MAX_EDGES,
) -> graphviz.Digraph:
    """A position-aware circuit in columns: one cluster per position or span (left to right in
    the circuit's column order), a node per (node, column) that a kept edge touches, and each
    row of a layer on one rank across the columns (``rank=same``). An edge ``s -> r @ c`` runs
    inside column c: the term sender s writes at those tokens and receiver r reads there
    (attention carries it to other positions inside the head)."""
    import graphviz

    g = circuit.graph
    assert circuit.positions is not None
    cols = circuit.positions
    names = role_names(roles)
    idx = circuit.in_graph.nonzero().tolist()
    terms = [(s, r, c, float(circuit.score_matrix[s, r, c])) for s, r, c in idx]
    left_out = 0
    if max_edges is not None and len(terms) > max_edges:
        terms.sort(key=lambda t: -1.0 if math.isnan(t[3]) else -abs(t[3]))
        left_out = len(terms) - max_edges
        terms = terms[:max_edges]
    dot = graphviz.Digraph("circuit", engine="dot")
    dot.attr(rankdir="BT", ranksep="0.55", nodesep="0.2", fontname="Helvetica", newrank="true")
    dot.attr("node", shape="box", style="rounded,filled", fontname="Helvetica", fontsize="10")
    dot.attr("edge", arrowsize="0.5")

    used: dict[int, set[str]] = {}
    for s, r, c, _ in terms:
        used.setdefault(c, set()).update({g.senders[s].name, g.receivers[r].node})
    order = row_order(g)
    ranks: dict[str, list[str]] = {}
    for c in sorted(used):
        with dot.subgraph(name=f"cluster_col{c}") as sub:
            sub.attr(label=str(cols[c]), style="rounded,dashed", color="#bbbbbb", fontsize="11")
            for name in sorted(used[c], key=lambda n: g.topological_order().index(n)):
                node = g.nodes[name]
                fill = "#ffffff"
                if node.kind == "head":
                    fill = ROLE_COLOURS.get(
                        names.get(name, "unlabelled"), ROLE_COLOURS["unlabelled"]
                    )
                elif node.kind == "mlp":
                    fill = "#e0e0e0"
                nid = f"{name}@{cols[c]}"
                sub.node(nid, label=node.label, fillcolor=fill, tooltip=nid)
                ranks.setdefault(row_key(g, name), []).append(nid)
    for rank in [r for r in order if r in ranks]:
        with dot.subgraph() as same:
            same.attr(rank="same")
            for nid in ranks[rank]:
                same.node(nid)
    finite = [abs(t[3]) for t in terms if not math.isnan(t[3])]
    biggest = max(finite) if finite and max(finite) > 0 else 1.0
    for s, r, c, score in terms:
        recv = g.receivers[r]
        width = MIN_WIDTH
        if not math.isnan(score):
            width = MIN_WIDTH + (MAX_WIDTH - MIN_WIDTH) * abs(score) / biggest
        dot.edge(
            f"{g.senders[s].name}@{cols[c]}",
            f"{recv.node}@{cols[c]}",
            color=EDGE_COLOURS[recv.qkv or ""],
            penwidth=f"{width:.2f}",
            tooltip=f"{g.edge_name(s, r)}@{cols[c]}: {_fmt(score)}",
        )
    label = title or "position-aware circuit"
    if left_out:
        label += f" ({left_out} weaker edges not drawn)"
    dot.attr(label=label, labelloc="b", labeljust="l", fontsize="10")
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
    max_edges: int | None = MAX_EDGES,
) -> Path:
    """Draw ``circuit`` to ``path`` (``.svg``, ``.png``, ``.pdf``; ``.gv``/``.dot`` for DOT only).

    At most ``max_edges`` edges are drawn (the strongest by |score|; ``None`` draws all) and
    the legend says how many were left out; a PNG is scaled down to at most
    ``MAX_PNG_INCHES * PNG_DPI`` pixels a side, with a warning when it was.

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
            + " (or .html for the report: circuitfind render CIRCUIT.json -o report.html)"
        )
    if roles is None and model is not None and task is not None:
        from circuitfind.roles import detect_roles

        heads = [n for n in circuit.nodes if n.startswith("a")]
        roles = detect_roles(model, task, heads=heads, circuit=circuit) if heads else {}
    dot = dot_source(circuit, roles=roles, title=_title(circuit), max_edges=max_edges)
    _, left_out = drawn_edges(circuit, max_edges)
    if left_out:
        logger.warning(
            "%s shows the %d strongest of %d edges; %d are left out (all are in the circuit "
            "file; render(..., max_edges=None) draws every one)",
            path.name,
            circuit.n_edges - left_out,
            circuit.n_edges,
            left_out,
        )
    return write_dot(dot, path)


def write_dot(dot: graphviz.Digraph, path: str | os.PathLike[str]) -> Path:
    """Write ``dot`` to ``path`` (its suffix one of ``FORMATS``): the DOT source always (beside
    the image, ``.gv``), the image through ``dot`` (PNGs capped, with a warning when scaled).

    Raises:
        GraphvizNotFoundError: ``dot`` is missing (the ``.gv`` file is written first).
        InputError: an unknown file suffix.
    """
    from circuitfind.errors import InputError

    path = Path(path)
    fmt = path.suffix.lower().lstrip(".")
    if fmt not in FORMATS:
        raise InputError(
            f"cannot draw to {path.name!r}: use a file ending in "
            + ", ".join(f".{f}" for f in FORMATS)
        )
    if fmt == "png":
        dot.attr(size=f"{MAX_PNG_INCHES},{MAX_PNG_INCHES}", dpi=str(PNG_DPI))
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
    if fmt == "png":
        _warn_if_scaled(dot, path)
    path.write_bytes(dot.pipe(format=fmt, quiet=True))
    logger.info("wrote %s and %s", path, gv)
    return path


def _warn_if_scaled(dot: graphviz.Digraph, path: Path) -> None:
    """Warn when the layout is larger than the PNG cap (graphviz then scales it down)."""
    try:
        first = dot.pipe(format="plain", quiet=True).decode().splitlines()[0].split()
        width, height = float(first[2]), float(first[3])
    except (IndexError, ValueError):
        return
    if max(width, height) > MAX_PNG_INCHES:
        side = MAX_PNG_INCHES * PNG_DPI
        logger.warning(
            "%s is scaled down to fit %d x %d px (the layout is %.0f x %.0f in); use .svg or "
            ".pdf for full detail",
            path.name,
            side,
            side,
            width,
            height,
        )
