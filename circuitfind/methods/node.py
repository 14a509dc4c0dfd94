"""Node ablation: each head's and MLP's output replaced by its ablated value everywhere."""

from __future__ import annotations

from typing import Any

import torch
from tqdm.auto import tqdm

from circuitfind.graph import Graph
from circuitfind.model import Model
from circuitfind.patching import Ablation, MaskEvaluator

__all__ = ["node_scores"]


def node_scores(
    model: Model,
    graph: Graph,
    task: Any,
    ablation: Ablation,
    *,
    batch_size: int = 32,
    metric: Any = None,
    progress: bool = True,
    evaluator: MaskEvaluator | None = None,
) -> dict[str, float]:
    """metric(node ablated) - metric(clean) for every node but ``input`` and ``logits``
    (``evaluator``: prepared runs of the same task and ablation to reuse)."""
    if evaluator is None:
        evaluator = MaskEvaluator(model, graph, task, ablation, batch_size)
    evaluator = evaluator.with_metric(metric)
    full = graph.valid.clone().to(torch.float32)
    clean = evaluator(full)
    out: dict[str, float] = {}
    H = model.cfg.n_heads
    for s, node in enumerate(tqdm(graph.senders, desc="node ablation", disable=not progress)):
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
    return out
