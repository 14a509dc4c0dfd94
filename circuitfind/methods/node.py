"""Node ablation: each head's and MLP's output replaced by its ablated value everywhere."""

from __future__ import annotations

from typing import Any

import torch
from tqdm.auto import tqdm

from circuitfind.runs import PreparedRuns
from circuitfind.scores import Scores, edges_from_nodes

__all__ = ["score_nodes"]


def score_nodes(runs: PreparedRuns, *, metric: Any = None) -> Scores:
    """metric(node ablated) - metric(clean) for every node but ``input`` and ``logits``; each
    edge inherits the weaker of its two ends (:func:`circuitfind.scores.edges_from_nodes`)."""
    model, graph = runs.model, runs.graph
    evaluator = runs.evaluator(metric)
    full = graph.valid.clone().to(torch.float32)
    clean = evaluator(full)
    out: dict[str, float] = {}
    H = model.cfg.n_heads
    for s, node in enumerate(tqdm(graph.senders, desc="node ablation", disable=not runs.progress)):
        if node.kind == "input":
            continue
        mask = full.clone()
        mask[s] = 0
        assert node.layer is not None
        # Layers before the node's are untouched; its own layer's receivers are the first
        # that can differ (MLP of the same layer for heads in sequential models).
        start = node.layer + 1 if node.layer + 1 < model.cfg.n_layers else model.cfg.n_layers - 1
        if node.kind == "head" and not model.cfg.parallel_attn_mlp:
            start = node.layer
        start = max(0, min(start, model.cfg.n_layers - 1))
        assert 1 + start * (H + 1) <= graph.n_senders
        out[node.name] = evaluator(mask, start_layer=start) - clean
    return Scores(edges_from_nodes(graph, out), nodes=out)
