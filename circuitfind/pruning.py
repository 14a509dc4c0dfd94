"""From edge scores to kept edges: threshold, top-n, signed top-n, greedy growth, node selection,
dangling-edge removal. :func:`circuitfind.prune` (in :mod:`circuitfind.search`) applies one of
them, or the target-faithfulness search, to a scored circuit."""

from __future__ import annotations

import torch
from torch import Tensor

from circuitfind.errors import InputError
from circuitfind.graph import Graph

__all__ = [
    "greedy",
    "node_selection",
    "remove_dangling",
    "signed_top",
    "threshold",
    "top_n",
]


def _magnitude(graph: Graph, scores: Tensor) -> Tensor:
    mag = scores.abs()
    return torch.where(graph.valid & ~torch.isnan(mag), mag, torch.full_like(mag, -1.0))


def threshold(graph: Graph, scores: Tensor, tau: float) -> Tensor:
    """Edges with |score| >= tau."""
    return graph.valid & ~torch.isnan(scores) & (scores.abs() >= tau)


def top_n(graph: Graph, scores: Tensor, n: int) -> Tensor:
    """The n edges with the largest |score|."""
    if n < 0:
        raise InputError(f"top-n must be non-negative; got {n}")
    mag = _magnitude(graph, scores).flatten()
    keep = torch.zeros_like(mag, dtype=torch.bool)
    n = min(n, int((mag >= 0).sum()))
    if n:
        keep[mag.topk(n).indices] = True
    return keep.view_as(scores)


def greedy(graph: Graph, scores: Tensor, n: int) -> Tensor:
    """Grow from the logits (as EAP-IG's greedy): repeatedly add the highest-|score| edge whose
    receiving node is already in the circuit, until n edges."""
    mag = _magnitude(graph, scores)
    keep = torch.zeros_like(mag, dtype=torch.bool)
    in_circuit = {"logits"}
    receivers_of: dict[str, list[int]] = {}
    for rec in graph.receivers:
        receivers_of.setdefault(rec.node, []).append(rec.index)
    candidates = torch.zeros_like(keep)
    for r in receivers_of["logits"]:
        candidates[:, r] = graph.valid[:, r]
    for _ in range(n):
        masked = torch.where(candidates & ~keep, mag, torch.full_like(mag, -2.0))
        best = int(masked.flatten().argmax())
        if masked.flatten()[best] < -1.5:
            break
        s, r = divmod(best, graph.n_receivers)
        keep[s, r] = True
        sender = graph.senders[s].name
        if sender not in in_circuit and sender in receivers_of:
            in_circuit.add(sender)
            for rr in receivers_of[sender]:
                candidates[:, rr] = graph.valid[:, rr]
    return keep


def remove_dangling(graph: Graph, keep: Tensor) -> Tensor:
    """Drop edges not on a path from ``input`` to ``logits``: repeatedly remove edges whose
    sender (other than input) receives no kept edge, or whose receiving node (other than
    logits) sends no kept edge."""
    keep = keep.clone() & graph.valid
    node_of_receiver = [graph.sender_index.get(r.node, -1) for r in graph.receivers]
    recv_node = torch.tensor(node_of_receiver)
    while True:
        sends = keep.any(1)  # [S]: sender has an outgoing kept edge
        receives = torch.zeros(graph.n_senders, dtype=torch.bool)
        has_in = keep.any(0)  # [R]
        idx = recv_node[has_in & (recv_node >= 0)]
        receives[idx] = True
        receives[0] = True  # input needs no inputs
        ok_sender = receives[:, None].expand_as(keep)
        alive_recv = torch.ones(graph.n_receivers, dtype=torch.bool)
        mask = recv_node >= 0
        alive_recv[mask] = sends[recv_node[mask]]
        new = keep & ok_sender & alive_recv[None, :]
        if torch.equal(new, keep):
            return keep
        keep = new


def signed_top(graph: Graph, scores: Tensor, n: int) -> Tensor:
    """The n edges with the largest signed score (give it helpfulness: the CPR ranking)."""
    s = torch.where(graph.valid & ~torch.isnan(scores), scores, torch.full_like(scores, -1e30))
    keep = torch.zeros(s.numel(), dtype=torch.bool)
    if n:
        keep[s.flatten().topk(min(n, s.numel())).indices] = True
    return keep.view_as(scores) & graph.valid


def node_selection(graph: Graph, nodes: dict[str, float], n: int) -> Tensor:
    """Every edge among ``input``, ``logits`` and the n nodes of largest |score|."""
    ranked = sorted(nodes, key=lambda k: -abs(nodes[k]))[:n]
    keep = {"input", "logits", *ranked}
    s_ok = torch.tensor([node.name in keep for node in graph.senders])
    r_ok = torch.tensor([r.node in keep for r in graph.receivers])
    return graph.valid & s_ok[:, None] & r_ok[None, :]
