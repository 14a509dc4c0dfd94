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
from circuitfind.patching import Ablation, MaskEvaluator, with_clean_logits
from circuitfind.prune import top_n

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
    keep[s.flatten().topk(n).indices] = True
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
) -> Evaluation:
    """Faithfulness of ``circuit`` on ``task`` with everything outside it ablated.

    Args:
        ablation: resample / mean / mean-positional / zero; default: the circuit's own.
        curve: also compute the faithfulness curve over circuits holding CURVE_PERCENTS of the
            edges (ranked by |score| and by signed score) and MIB's CPR and CMD areas.
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
    kind = ablation or circuit.meta.get("ablation", "resample")
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
    if curve:
        scores = circuit.scores
        for pct in CURVE_PERCENTS:
            n = max(1, round(graph.n_edges * pct / 100))
            f_abs = faithfulness(ev(top_n(graph, scores, n).float()), m_full, m_empty)
            f_sig = faithfulness(ev(_signed_top(graph, scores, n).float()), m_full, m_empty)
            result.curve_abs.append((pct, f_abs))
            result.curve.append((pct, f_sig))
        result.cpr = _area(result.curve)
        result.cmd = _area(result.curve_abs, lambda y: np.abs(1 - y))
    return result


def roc_auc(scores: Tensor, reference: Tensor, valid: Tensor | None = None) -> float:
    """ROC AUC of |scores| for recovering the True entries of ``reference`` (same shape)."""
    mask = torch.ones_like(reference, dtype=torch.bool) if valid is None else valid
    s = scores[mask].abs().nan_to_num(0.0).double().numpy()
    y = reference[mask].bool().numpy()
    if y.all() or not y.any():
        return float("nan")
    u = mannwhitneyu(s[y], s[~y], alternative="two-sided").statistic
    return float(u / (y.sum() * (~y).sum()))
