"""Selection rules for position-aware edges [S, R, P] (:mod:`circuitfind.positions`).

Each (edge, column) is one edge for ranking: top-n keeps the n terms of largest |score| over
every edge and column. Nodes are not split by position (a head at one position reads keys and
values at others), so dangling-edge removal runs on the circuit with every column merged: an
(edge, column) stays when its edge is on a path from ``input`` to ``logits`` there.
"""

from __future__ import annotations

from torch import Tensor

from circuitfind.graph import Graph
from circuitfind.pruning import remove_dangling as remove_dangling_edges
from circuitfind.pruning import signed_top as signed_top_edges
from circuitfind.pruning import threshold as threshold_edges
from circuitfind.pruning import top_n as top_n_edges

__all__ = ["collapse", "remove_dangling", "signed_top", "threshold", "top_n", "valid_like"]


def valid_like(graph: Graph, scores: Tensor) -> Tensor:
    """``graph.valid`` shaped like ``scores``: [S, R] or [S, R, P]."""
    if scores.dim() == 2:
        return graph.valid
    return graph.valid[..., None].expand(*graph.valid.shape, scores.shape[-1])


def _flat(graph: Graph, scores: Tensor) -> tuple[Graph, Tensor]:
    """A graph whose ``valid`` is [S, R * P], and the scores as [S, R * P]."""
    S = scores.shape[0]
    flat = _FlatGraph(valid_like(graph, scores).reshape(S, -1))
    return flat, scores.reshape(S, -1)  # type: ignore[return-value]


class _FlatGraph:
    """Just enough of a Graph for the selection rules that read only ``valid``."""

    def __init__(self, valid: Tensor) -> None:
        self.valid = valid


def top_n(graph: Graph, scores: Tensor, n: int) -> Tensor:
    """The n (edge, column) terms of largest |score| (position-free scores pass through)."""
    if scores.dim() == 2:
        return top_n_edges(graph, scores, n)
    flat, s = _flat(graph, scores)
    return top_n_edges(flat, s, n).view_as(scores)  # type: ignore[arg-type]


def threshold(graph: Graph, scores: Tensor, tau: float) -> Tensor:
    """The terms with |score| >= tau."""
    if scores.dim() == 2:
        return threshold_edges(graph, scores, tau)
    flat, s = _flat(graph, scores)
    return threshold_edges(flat, s, tau).view_as(scores)  # type: ignore[arg-type]


def signed_top(graph: Graph, scores: Tensor, n: int) -> Tensor:
    """The n terms of largest signed score (helpfulness: the CPR ranking)."""
    if scores.dim() == 2:
        return signed_top_edges(graph, scores, n)
    flat, s = _flat(graph, scores)
    return signed_top_edges(flat, s, n).view_as(scores)  # type: ignore[arg-type]


def remove_dangling(graph: Graph, keep: Tensor) -> Tensor:
    """Drop the terms whose edge is not on an input-to-logits path of the merged circuit."""
    if keep.dim() == 2:
        return remove_dangling_edges(graph, keep)
    merged = remove_dangling_edges(graph, keep.any(-1))
    return keep & valid_like(graph, keep) & merged[..., None]


def collapse(keep: Tensor) -> Tensor:
    """[S, R] edges with any column kept."""
    return keep if keep.dim() == 2 else keep.any(-1)
