"""ACDC (Conmy et al. 2023): iterative pruning in reverse topological order.

Receivers are visited from the logits back to layer 0; each incoming edge is tentatively
ablated and stays out if the metric moves by less than ``tau`` (for KL, if KL to the clean run
grows by less than ``tau``). Receivers of a node that no longer feeds anything are dropped
without a run. Since every receiver before the current layer still keeps all its edges, runs
start at the current receiver's layer from the clean cache.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor
from tqdm.auto import tqdm

from circuitfind.graph import Graph
from circuitfind.model import Model
from circuitfind.patching import Ablation, MaskEvaluator, with_clean_logits

__all__ = ["acdc"]


def acdc(
    model: Model,
    graph: Graph,
    task: Any,
    ablation: Ablation,
    *,
    tau: float,
    metric: Any = "kl",
    batch_size: int = 32,
    progress: bool = True,
) -> tuple[Tensor, Tensor]:
    """Run ACDC. Returns (scores [S, R]: the metric change measured when each edge was tried,
    NaN for edges never tried; kept [S, R] bool)."""
    task = with_clean_logits(model, task)
    evaluator = MaskEvaluator(model, graph, task, ablation, batch_size, metric=metric)
    name = metric if isinstance(metric, str) else getattr(metric, "name", "")
    one_sided = name == "kl"
    mask = graph.valid.clone().to(torch.float32)
    scores = torch.full((graph.n_senders, graph.n_receivers), float("nan"))
    current = evaluator(mask)
    bar = tqdm(total=graph.n_edges, desc="acdc", disable=not progress, unit="edge")
    for r in reversed(range(graph.n_receivers)):
        rec = graph.receivers[r]
        upstream = int(graph.n_upstream[r])
        if rec.node != "logits":
            sender = graph.sender_index[rec.node]
            if not bool(mask[sender].any()):  # the node feeds nothing any more
                mask[:upstream, r] = 0
                bar.update(upstream)
                continue
        # Receivers of layers before this one keep every edge: their senders are clean.
        start_layer = rec.layer if rec.layer is not None else model.cfg.n_layers
        for s in reversed(range(upstream)):
            mask[s, r] = 0
            value = evaluator(mask, start_layer=start_layer)
            change = value - current
            scores[s, r] = change
            if (change if one_sided else abs(change)) < tau:
                current = value
            else:
                mask[s, r] = 1
            bar.update(1)
    bar.close()
    return scores, mask.bool() & graph.valid
