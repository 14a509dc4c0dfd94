"""What a scoring method returns, and the one rule for which way a score points.

Every method returns :class:`Scores`. Scores are kept as the method measured them (for exact
patching, EAP and EAP-IG: metric(edge ablated) - metric(clean)). Pruning, faithfulness curves,
MIB's CPR and the diagrams need the *contribution* view instead: larger = helps the task more.
:func:`orientation` is the single place that decides the sign between the two, and
:func:`helpfulness` applies it.

Node scores and edge scores meet here too: :func:`node_totals` is the one definition of "a
node's score from its edges", :func:`edges_from_nodes` the one of "an edge's score from its
nodes' scores".
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor

from circuitfind.graph import Graph

__all__ = ["Scores", "edges_from_nodes", "helpfulness", "node_totals", "orientation"]


@dataclass
class Scores:
    """A method's result.

    Attributes:
        edges: [sender, receiver] float tensor, NaN outside ``graph.valid`` and for edges the
            method did not score.
        nodes: node name -> score, for node-level methods (``edges`` is then derived from it
            with :func:`edges_from_nodes`).
        kept: [sender, receiver] bool ([S, R, P] for position-aware scores), for methods that
            choose their circuit themselves (ACDC, the learned masks).
        orientation: how these scores point, when it differs from the method's table row
            (ACDC on the task metric measures ablated-minus-clean changes).
    """

    edges: Tensor
    nodes: dict[str, float] | None = None
    kept: Tensor | None = None
    orientation: Literal["ablated-minus-clean", "helps-positive"] | None = None


def orientation(
    kind: Literal["ablated-minus-clean", "helps-positive"], m_full: float, m_empty: float
) -> float:
    """+1 or -1 such that ``orientation * score > 0`` for a score that helps the task.

    An ``ablated-minus-clean`` score helps when ablating the edge moves the metric from the
    full model's value toward the empty circuit's: that is a negative score when
    m(empty) < m(full) (a logit difference the circuit builds up) and a positive one when
    m(empty) > m(full) (a KL or loss the circuit keeps low). ``helps-positive`` scores are
    already oriented.
    """
    if kind == "helps-positive":
        return 1.0
    return 1.0 if m_empty >= m_full else -1.0


def helpfulness(scores: Tensor, sign: float) -> Tensor:
    """Scores in the contribution view (``sign`` from :func:`orientation`); unscored edges
    become 0 (no evidence either way)."""
    return scores.nan_to_num(0.0) * float(sign)


def node_totals(
    graph: Graph, matrix: Tensor, keep: Tensor | None = None, how: Literal["sum", "max-abs"] = "sum"
) -> dict[str, float]:
    """A score for every node from the scores of its edges.

    ``how="sum"``: the sum of its outgoing edges' scores (incoming for ``logits``), over the
    edges in ``keep`` when given — what a node adds through the circuit. ``how="max-abs"``: its
    largest |score| over incoming and outgoing edges — how strongly any edge of it was scored
    (used to rank nodes, e.g. for a node ROC AUC).

    Position-aware scores [S, R, P] count an edge's columns together (nodes are not split by
    position): its scores summed over the columns kept.
    """
    if matrix.dim() == 3:
        if keep is not None and keep.dim() == 3:
            matrix, keep = matrix.nan_to_num(0.0) * keep, None
        matrix = matrix.nan_to_num(0.0).sum(-1)
    values = matrix.nan_to_num(0.0) * graph.valid
    if keep is not None:
        values = values * keep
    out: dict[str, float] = {}
    if how == "sum":
        by_sender = values.sum(1)
        for i, node in enumerate(graph.senders):
            out[node.name] = float(by_sender[i])
        out["logits"] = float(values[:, graph.receiver_index["logits"]].sum())
        return out
    mag = values.abs()
    for i, node in enumerate(graph.senders):
        out[node.name] = float(mag[i].max())
    for j, rec in enumerate(graph.receivers):
        out[rec.node] = max(out.get(rec.node, 0.0), float(mag[:, j].max()))
    return out


def edges_from_nodes(graph: Graph, nodes: dict[str, float]) -> Tensor:
    """Edge scores from node scores: an edge matters as much as its weaker end (``input`` and
    ``logits`` carry no score and never limit an edge). NaN outside ``graph.valid``."""
    big = float("inf")
    s_val = torch.tensor(
        [abs(nodes.get(n.name, big)) if n.kind != "input" else big for n in graph.senders]
    )
    r_val = torch.tensor(
        [abs(nodes.get(r.node, big)) if r.node != "logits" else big for r in graph.receivers]
    )
    out = torch.minimum(s_val[:, None], r_val[None, :])
    out[torch.isinf(out)] = 0.0
    out[~graph.valid] = float("nan")
    return out
