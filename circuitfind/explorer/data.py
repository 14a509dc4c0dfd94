"""The explorer's data: everything the page draws, as one JSON payload.

Slider points. The circuit-size slider stops at the points of the evaluation's faithfulness
curve ranked by |score| (``Evaluation.curve_abs``, the ranking pruning uses): at each, the
circuit is ``remove_dangling(top_n(scores, int(pct x edges)))``, exactly what
:func:`circuitfind.evaluate` measured, with its measured faithfulness and bootstrap standard
error (``curve_abs_stderr``). The circuit itself is one more point (its own faithfulness and
error). Those circuits are nested (more top edges keep every path a smaller set had), so one
edge list serves every point: at a point the page draws at most ``MAX_DRAWN`` of its edges, the
strongest by |score|, and says how many it leaves out; only the edges some point draws are
sent.

Edges are ``[sender node, receiver node, "q"|"k"|"v"|"", score, frequency]`` (node = index in
``nodes``; score rounded to four significant digits). ``frequency`` is the edge's bootstrap
frequency (the share of resampled discoveries that kept it), read from, in order: the
``frequencies`` argument ({edge name: f}), ``circuit.meta["edge_frequency"]`` ({edge name: f}),
discover's bootstrap (``circuit.meta["stability"]["frequency"]``), or a circuit file's
``edges[name]["frequency"]`` (:func:`frequencies_from_file`); ``null`` when the circuit has
none. The page draws an edge with opacity = its frequency (at least 0.15; 1 without one).

``sign`` is :func:`circuitfind.render.helpfulness_sign`: an edge helps the task when
``sign * score > 0`` (scores are "metric with the edge ablated minus clean", so for a metric
that ablation lowers, helpful edges have negative scores).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

from circuitfind.explorer.layout import layered_layout
from circuitfind.explorer.probe import sig

if TYPE_CHECKING:
    from circuitfind.circuit import Circuit

__all__ = [
    "MAX_DRAWN",
    "SliderPoint",
    "build_payload",
    "frequencies_from_file",
    "slider_points",
]

MAX_DRAWN = 300  # edges drawn at one slider position: more than a person can follow
PAYLOAD_VERSION = 1


def _get(obj: Any, key: str, default: Any = None) -> Any:
    if obj is None:
        return default
    if isinstance(obj, dict):
        return obj.get(key, default)
    return getattr(obj, key, default)


@dataclass
class SliderPoint:
    """One position of the size slider: the circuit there and its measured faithfulness."""

    label: str
    percent: float  # share of all edges the ranking took (the curve's x), or the circuit's own
    mask: Tensor  # [S, R] bool: the circuit at this point
    faithfulness: float | None
    stderr: float | None
    own: bool = False  # the discovered circuit itself

    @property
    def n_edges(self) -> int:
        return int(self.mask.sum())


def slider_points(circuit: Circuit, evaluation: Any = None) -> list[SliderPoint]:
    """The slider's points (module docstring), smallest circuit first; the circuit's own point
    is always there. A position-aware circuit is shown with its positions merged
    (``Circuit.collapsed``) and its own point only: its curve counts (edge, position) terms."""
    from circuitfind.evaluation import curve_sizes
    from circuitfind.pruning import remove_dangling, top_n

    graph = circuit.graph
    evaluation = evaluation if evaluation is not None else circuit.meta.get("evaluation")
    points: list[SliderPoint] = []
    curve = _get(evaluation, "curve_abs") or []
    errors = list(_get(evaluation, "curve_abs_stderr") or [])
    merged = bool(circuit.meta.get("collapsed_from_positions"))
    if merged:  # the curve counts (edge, position) terms: its circuits are not these edges
        curve = []
    if curve and circuit.has_scores:
        scores = circuit.score_matrix.nan_to_num(0.0)  # as the evaluation's curve ranks them
        sizes = curve_sizes(graph.n_edges)
        if len(sizes) != len(curve):
            sizes = [int(graph.n_edges * float(p) / 100) for p, _ in curve]
        for k, ((pct, f), n) in enumerate(zip(curve, sizes)):
            mask = remove_dangling(graph, top_n(graph, scores, n))
            se = errors[k] if k < len(errors) else None
            points.append(
                SliderPoint(f"top {float(pct):g}% by |score|", float(pct), mask, _num(f), _num(se))
            )
    own_f = _get(evaluation, "faithfulness", circuit.meta.get("faithfulness"))
    own_se = _get(evaluation, "faithfulness_stderr", circuit.meta.get("faithfulness_stderr"))
    share = 100.0 * circuit.n_edges / max(1, graph.n_edges)
    own = circuit.in_graph.clone()
    label = "this circuit (its positions merged)" if merged else "this circuit"
    points.append(SliderPoint(label, share, own, _num(own_f), _num(own_se), True))
    points.sort(key=lambda p: (p.n_edges, not p.own))
    return points


def _num(x: Any) -> float | None:
    if x is None:
        return None
    x = float(x)
    return x if math.isfinite(x) else None


def frequencies_from_file(path: str | Path) -> dict[str, float] | None:
    """``{edge name: frequency}`` from a circuit file's ``edges[name]["frequency"]``, or None
    when no edge has one."""
    data = json.loads(Path(path).read_text(encoding="utf-8-sig"))
    edges = data.get("edges") if isinstance(data, dict) else None
    if not isinstance(edges, dict):
        return None
    out = {
        name: float(entry["frequency"])
        for name, entry in edges.items()
        if isinstance(entry, dict) and isinstance(entry.get("frequency"), (int, float))
    }
    return out or None


def _frequency_matrix(circuit: Circuit, frequencies: dict[str, float] | None) -> Tensor | None:
    """[S, R] frequencies (NaN where unknown), or None when the circuit has none."""
    from circuitfind.graph import parse_edge

    freq = frequencies if frequencies is not None else circuit.meta.get("edge_frequency")
    if not isinstance(freq, dict) or not freq:
        from circuitfind.stability import frequency_matrix

        return frequency_matrix(circuit)  # discover's bootstrap (meta["stability"]), or None
    g = circuit.graph
    out = torch.full((g.n_senders, g.n_receivers), float("nan"))
    for name, value in freq.items():
        edge = g.edges.get(parse_edge(name, g.cfg))
        if edge is not None and isinstance(value, (int, float)):
            out[edge.sender_index, edge.receiver_index] = float(value)
    return out


def _drawn(mask: Tensor, scores: Tensor, limit: int) -> tuple[list[tuple[int, int]], int]:
    """The strongest ``limit`` edges of ``mask`` by |score| (NaN last) and how many were left
    out."""
    s_idx, r_idx = mask.nonzero(as_tuple=True)
    mag = scores[s_idx, r_idx].abs().nan_to_num(-1.0)
    if len(mag) > limit:
        keep = mag.topk(limit).indices
        s_idx, r_idx = s_idx[keep], r_idx[keep]
    return list(zip(s_idx.tolist(), r_idx.tolist())), max(0, int(mask.sum()) - limit)


def _roles(circuit: Circuit, roles: Any) -> dict[str, dict[str, Any]]:
    """``{head: {"role", "score", "evidence"}}`` from Role objects, names, or the circuit's
    saved ``meta["roles"]``."""
    from circuitfind.names import parse_node
    from circuitfind.roles import Role

    out: dict[str, dict[str, Any]] = {}
    source = roles if roles else circuit.meta.get("roles") or {}
    for head, role in source.items():
        name = parse_node(head)
        if isinstance(role, Role):
            evidence = {k: sig(v) for k, v in role.evidence.items()}
            out[name] = {"role": role.name, "score": sig(role.score), "evidence": evidence}
        elif isinstance(role, dict):
            out[name] = {"role": str(role.get("role", "unlabelled")),
                         "score": sig(float(role.get("score", 0.0))), "evidence": {}}  # fmt: skip
        else:
            out[name] = {"role": str(role), "score": None, "evidence": {}}
    return out


def _meta(circuit: Circuit, evaluation: Any, task: Any) -> dict[str, Any]:
    from circuitfind.report import metric_description

    meta = circuit.meta
    return {
        "model": meta.get("model"),
        "task": meta.get("task") or _get(task, "name"),
        "method": meta.get("method"),
        "ablation": meta.get("ablation"),
        "metric": metric_description(circuit, task),
        "n_prompts": _get(evaluation, "n_prompts"),
        "n_edges_total": circuit.graph.n_edges,
        "effect": _num(_get(evaluation, "effect")),
        "effect_stderr": _num(_get(evaluation, "effect_stderr")),
        "reliable": _get(evaluation, "reliable", True),
        "warning": _get(evaluation, "warning"),
    }


def build_payload(
    circuit: Circuit,
    *,
    evaluation: Any = None,
    roles: Any = None,
    model: Any = None,
    task: Any = None,
    frequencies: dict[str, float] | None = None,
    serve: bool = False,
    n_prompts: int = 3,
    max_drawn: int = MAX_DRAWN,
) -> dict[str, Any]:
    """The explorer's payload (module docstring). ``model`` and ``task`` add the prompts,
    attention patterns and DLA; without them the page shows the graph, roles and slider."""
    from circuitfind.render import EDGE_COLOURS, helpfulness_sign
    from circuitfind.roles import ROLE_COLOURS, ROLES
    from circuitfind.scores import node_totals

    g = circuit.graph
    evaluation = evaluation if evaluation is not None else circuit.meta.get("evaluation")
    points = slider_points(circuit, evaluation)
    scores = circuit.score_matrix
    drawn_per_point = [_drawn(p.mask, scores, max_drawn) for p in points]
    pairs = sorted({e for drawn, _ in drawn_per_point for e in drawn})
    index = {e: k for k, e in enumerate(pairs)}
    names = {g.senders[s].name for s, _ in pairs} | {g.receivers[r].node for _, r in pairs}
    names |= {"input", "logits"}
    ordered = [n for n in g.topological_order() if n in names]
    node_index = {n: k for k, n in enumerate(ordered)}
    pos, rows = layered_layout(g, ordered)
    freq = _frequency_matrix(circuit, frequencies)
    edges = []
    for s, r in pairs:
        recv = g.receivers[r]
        f = None if freq is None else sig(float(freq[s, r]), 3)
        edges.append(
            [
                node_index[g.senders[s].name],
                node_index[recv.node],
                recv.qkv or "",
                sig(float(scores[s, r])),
                f,
            ]
        )
    role_info = _roles(circuit, roles)
    totals = node_totals(g, scores, keep=circuit.in_graph)
    in_circuit = set(circuit.nodes)
    dla: dict[str, Any] = {}
    patterns: dict[str, Any] = {}
    prompts: list[dict[str, Any]] = []
    n_dla = 0
    if model is not None and task is not None:
        from circuitfind.explorer.probe import attention_patterns, direct_effects, prompt_views

        prompts = prompt_views(model, task, n_prompts)
        heads = [n for n in ordered if g.nodes[n].kind == "head"]
        patterns = attention_patterns(model, task, heads, n_prompts)
        dla, n_dla = direct_effects(model, task, [n for n in ordered if n != "logits"])
    nodes = []
    for name in ordered:
        node = g.nodes[name]
        info = role_info.get(name, {})
        entry: dict[str, Any] = {
            "id": name,
            "label": node.label,
            "kind": node.kind,
            "layer": node.layer,
            "head": node.head,
            "x": pos[name][0],
            "y": pos[name][1],
            "role": info.get("role", "unlabelled") if node.kind == "head" else None,
            "role_score": info.get("score"),
            "evidence": info.get("evidence", {}),
            "score": sig(totals[name]) if name in in_circuit else None,
            "dla": dla.get(name),
        }
        nodes.append(entry)
    point_data = []
    for p, (drawn, left_out) in zip(points, drawn_per_point):
        point_data.append(
            {
                "label": p.label,
                "percent": sig(p.percent),
                "n_edges": p.n_edges,
                "faithfulness": p.faithfulness,
                "stderr": p.stderr,
                "own": p.own,
                "edges": sorted(index[e] for e in drawn),
                "left_out": left_out,
            }
        )
    return {
        "version": PAYLOAD_VERSION,
        "meta": _meta(circuit, evaluation, task),
        "sign": helpfulness_sign(circuit),
        "nodes": nodes,
        "rows": [{"key": r.key, "label": r.label, "y": r.y} for r in rows],
        "edges": edges,
        "points": point_data,
        "initial_point": next(k for k, p in enumerate(points) if p.own),
        "has_frequency": freq is not None,
        "prompts": prompts,
        "patterns": patterns,
        "dla_prompts": n_dla,
        "roles": {r: ROLE_COLOURS[r] for r in ROLES},
        "edge_colours": dict(EDGE_COLOURS),
        "max_drawn": max_drawn,
        "serve": serve,
    }
