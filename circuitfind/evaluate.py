"""How good is a circuit: faithfulness, faithfulness curves (MIB's CPR/CMD), ROC AUC."""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import torch
from scipy.stats import mannwhitneyu
from torch import Tensor

from circuitfind.circuit import Circuit
from circuitfind.errors import InputError
from circuitfind.graph import Graph
from circuitfind.model import Model
from circuitfind.patching import Ablation, MaskEvaluator, ablation_kind, with_clean_logits
from circuitfind.prune import remove_dangling, top_n

__all__ = ["CURVE_PERCENTS", "Evaluation", "evaluate", "faithfulness", "roc_auc"]

logger = logging.getLogger(__name__)

CURVE_PERCENTS: tuple[float, ...] = (0.1, 0.2, 0.5, 1, 2, 5, 10, 20, 50, 100)


def faithfulness(m_circuit: float, m_full: float, m_empty: float) -> float:
    """f = (m(C) - m(empty)) / (m(N) - m(empty)); NaN when the model has no effect to explain."""
    denom = m_full - m_empty
    return float("nan") if abs(denom) < 1e-12 else (m_circuit - m_empty) / denom


@dataclass
class Evaluation:
    """Faithfulness of a circuit and, optionally, the curve over circuit sizes."""

    faithfulness: float
    metric_full: float
    metric_circuit: float
    metric_empty: float
    n_edges: int
    n_edges_total: int
    ablation: str
    curve: list[tuple[float, float]] = field(default_factory=list)  # (percent of edges, f)
    curve_abs: list[tuple[float, float]] = field(default_factory=list)
    cpr: float | None = None  # area under f, edges ranked by signed score
    cmd: float | None = None  # area under |1 - f|, edges ranked by |score|
    roc_auc_edges: float | None = None  # vs a reference circuit, edges ranked by |score|
    roc_auc_nodes: float | None = None  # nodes ranked by their largest |edge score|

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _area(points: list[tuple[float, float]], transform: Any = None) -> float:
    xs = np.array([p / 100 for p, _ in points])
    ys = np.array([f for _, f in points])
    if transform is not None:
        ys = transform(ys)
    return float(np.trapezoid(ys, xs))


def _signed_top(graph: Graph, scores: Tensor, n: int) -> Tensor:
    """The n edges with the largest signed score."""
    s = torch.where(graph.valid & ~torch.isnan(scores), scores, torch.full_like(scores, -1e30))
    keep = torch.zeros(s.numel(), dtype=torch.bool)
    if n:
        keep[s.flatten().topk(min(n, s.numel())).indices] = True
    return keep.view_as(scores) & graph.valid


def evaluate(
    model: Model,
    task: Any,
    circuit: Circuit,
    *,
    ablation: str | None = None,
    curve: bool = False,
    batch_size: int = 32,
    metric: Any = None,
    reference: Circuit | set[str] | None = None,
) -> Evaluation:
    """Faithfulness of ``circuit`` on ``task`` with everything outside it ablated.

    Args:
        ablation: resample / mean / mean-positional / zero; default: the circuit's own.
        curve: also compute the faithfulness curve over circuits holding CURVE_PERCENTS of the
            edges (ranked by |score| and by signed score; int(pct * edges) of them, then pruned
            to those on a path from input to logits, as MIB does) and MIB's CPR and CMD areas.
        reference: a known circuit (a ``Circuit`` or a set of edge names, any spelling): the
            ROC AUC of the circuit's scores for recovering its edges and its nodes.
    """
    from circuitfind.graph import Graph as _Graph

    graph = _Graph.from_model(model)
    if (graph.cfg.n_layers, graph.cfg.n_heads) != (
        circuit.graph.cfg.n_layers,
        circuit.graph.cfg.n_heads,
    ):
        raise InputError(
            f"the circuit is for a model with {circuit.graph.cfg.n_layers} layers x "
            f"{circuit.graph.cfg.n_heads} heads; this model has {graph.cfg.n_layers} x "
            f"{graph.cfg.n_heads}"
        )
    kind = ablation_kind(ablation or circuit.meta.get("ablation", "resample"))
    task = with_clean_logits(model, task)
    abl = Ablation(model, task, kind, batch_size)
    ev = MaskEvaluator(model, graph, task, abl, batch_size, metric=metric)
    full = graph.valid.float()
    m_full, m_empty = ev(full), ev(torch.zeros_like(full))
    m_c = ev(circuit.in_graph.float())
    result = Evaluation(
        faithfulness=faithfulness(m_c, m_full, m_empty),
        metric_full=m_full,
        metric_circuit=m_c,
        metric_empty=m_empty,
        n_edges=circuit.n_edges,
        n_edges_total=graph.n_edges,
        ablation=kind,
    )
    if reference is not None:
        ref = _reference_mask(graph, reference)
        result.roc_auc_edges = roc_auc(circuit.score_matrix, ref, graph.valid)
        node_scores = _node_scores(graph, circuit)
        ref_nodes = _nodes_of(graph, ref)
        names = [n.name for n in graph.senders if n.kind != "input"]
        result.roc_auc_nodes = roc_auc(
            torch.tensor([node_scores[n] for n in names]),
            torch.tensor([n in ref_nodes for n in names]),
        )
    if curve:
        scores = circuit.score_matrix.nan_to_num(0.0)  # an edge never scored (ACDC) has no evidence
        # rank the signed curve by helpfulness (see discover's meta["score_orientation"])
        orientation = circuit.meta.get("score_orientation")
        if orientation is None:
            orientation = 1.0 if m_empty >= m_full else -1.0
        signed = scores * float(orientation)
        for pct in CURVE_PERCENTS:
            # as MIB: int(pct * edges) edges, then only those on a path from input to logits
            # (the pruning discover applies, so the curve agrees with its circuits)
            n = int(graph.n_edges * pct / 100)
            by_abs = remove_dangling(graph, top_n(graph, scores, n))
            by_sign = remove_dangling(graph, _signed_top(graph, signed, n))
            f_abs = faithfulness(ev(by_abs.float()), m_full, m_empty)
            f_sig = faithfulness(ev(by_sign.float()), m_full, m_empty)
            result.curve_abs.append((pct, f_abs))
            result.curve.append((pct, f_sig))
        result.cpr = _area(result.curve)
        result.cmd = _area(result.curve_abs, lambda y: np.abs(1 - y))
    return result


def _reference_mask(graph: Graph, reference: Circuit | set[str]) -> Tensor:
    if isinstance(reference, Circuit):
        if reference.in_graph.shape != graph.valid.shape:
            raise InputError("the reference circuit is for a model of another shape")
        return reference.in_graph & graph.valid
    mask = torch.zeros_like(graph.valid)
    for name in reference:
        e = graph.edge(name)
        mask[e.sender_index, e.receiver_index] = True
    return mask


def _nodes_of(graph: Graph, edges: Tensor) -> set[str]:
    s, r = edges.nonzero(as_tuple=True)
    return {graph.senders[int(i)].name for i in s} | {graph.receivers[int(j)].node for j in r}


def _node_scores(graph: Graph, circuit: Circuit) -> dict[str, float]:
    """A node's score: its own (node methods) or its largest |score| over incident edges."""
    if circuit.node_scores:
        return {n.name: abs(circuit.node_scores.get(n.name, 0.0)) for n in graph.senders}
    mag = circuit.score_matrix.abs().nan_to_num(0.0) * graph.valid
    out = {n.name: float(mag[i].max()) for i, n in enumerate(graph.senders)}
    for j, rec in enumerate(graph.receivers):
        if rec.node in out:
            out[rec.node] = max(out[rec.node], float(mag[:, j].max()))
    return out


def roc_auc(scores: Tensor, reference: Tensor, valid: Tensor | None = None) -> float:
    """ROC AUC of |scores| for recovering the True entries of ``reference`` (same shape)."""
    mask = torch.ones_like(reference, dtype=torch.bool) if valid is None else valid
    s = scores[mask].abs().nan_to_num(0.0).double().numpy()
    y = reference[mask].bool().numpy()
    if y.all() or not y.any():
        return float("nan")
    u = mannwhitneyu(s[y], s[~y], alternative="two-sided").statistic
    return float(u / (y.sum() * (~y).sum()))
