"""Pruning an attribution graph by influence on the target, as circuit-tracer defines it.

With ``Â`` the adjacency with absolute values, each row normalised to sum to 1 (a target's
inputs as fractions), a node's influence is its total weight over all paths to the logit:
``w (Â + Â² + …)`` with ``w`` one-hot on the logit. Nodes are kept, most influential first, up
to the smallest set whose cumulative influence reaches ``node_threshold`` (tokens and the logit
always stay); on the graph restricted to them, an edge's score is its normalised weight times
its target's influence (plus the logit's own weight) and edges are kept up to cumulative
``edge_threshold``. Then features without a kept outgoing or incoming edge, and errors without a
kept outgoing edge, are dropped until nothing changes.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor

from circuitfind.errors import InputError

__all__ = ["PruneResult", "compute_influence", "find_threshold", "normalize", "prune_graph"]


class PruneResult(NamedTuple):
    node_mask: Tensor  # [n] bool
    edge_mask: Tensor  # [n, n] bool, rows = targets
    influence: Tensor  # [n] node influence on the target (before pruning)
    cumulative: Tensor  # [n] cumulative share of influence at each node's rank


def normalize(A: Tensor) -> Tensor:
    """|A| with each row scaled to sum to 1 (zero rows stay zero)."""
    a = A.abs()
    return a / a.sum(1, keepdim=True).clamp(min=1e-10)


def compute_influence(A: Tensor, weights: Tensor, max_iter: int = 1000) -> Tensor:
    """``weights (A + A² + …)`` for a nilpotent A (a DAG's adjacency)."""
    current = weights @ A
    total = current.clone()
    for _ in range(max_iter):
        if not bool(current.any()):
            return total
        current = current @ A
        total += current
    raise InputError("influence did not converge: the adjacency has a cycle")


def find_threshold(scores: Tensor, threshold: float) -> Tensor:
    """The score above which the largest scores reach ``threshold`` of their sum."""
    s = torch.sort(scores.flatten(), descending=True).values
    cum = torch.cumsum(s, 0) / s.sum().clamp(min=1e-30)
    i = int(torch.searchsorted(cum, torch.tensor(threshold, dtype=cum.dtype)))
    return s[min(i, len(s) - 1)]


def prune_graph(
    A: Tensor,
    n_features: int,
    n_tokens: int,
    n_logits: int,
    node_threshold: float = 0.8,
    edge_threshold: float = 0.98,
) -> PruneResult:
    """Node and edge masks for adjacency ``A`` ordered [features, errors, tokens, logits]."""
    for name, v in (("node_threshold", node_threshold), ("edge_threshold", edge_threshold)):
        if not 0.0 <= v <= 1.0:
            raise InputError(f"{name} must be in [0, 1]; got {v}")
    n = A.shape[0]
    w = torch.zeros(n, dtype=A.dtype)
    w[n - n_logits :] = 1.0 / n_logits
    influence = compute_influence(normalize(A), w)
    node_mask = influence >= find_threshold(influence, node_threshold)
    node_mask[n - n_logits - n_tokens :] = True
    pruned = A.clone()
    pruned[~node_mask] = 0
    pruned[:, ~node_mask] = 0
    norm = normalize(pruned)
    edge_scores = norm * (compute_influence(norm, w) + w)[:, None]
    edge_mask = edge_scores >= find_threshold(edge_scores, edge_threshold)
    edge_mask &= edge_scores > 0
    inner = n - n_logits - n_tokens
    while True:
        old = node_mask.clone()
        edge_mask[~node_mask] = False
        edge_mask[:, ~node_mask] = False
        node_mask[:inner] &= edge_mask[:, :inner].any(0)  # features/errors need an outgoing edge
        node_mask[:n_features] &= edge_mask[:n_features].any(1)  # features need an incoming one
        if torch.equal(old, node_mask):
            break
    order = torch.argsort(influence, descending=True)
    cum = torch.zeros_like(influence)
    cum[order] = torch.cumsum(influence[order], 0) / influence.sum().clamp(min=1e-30)
    return PruneResult(node_mask, edge_mask, influence, cum)
