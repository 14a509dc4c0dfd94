"""ACDC (Conmy et al. 2023): iterative pruning in reverse topological order.

Receivers are visited from the logits back to layer 0; each incoming edge is tentatively
ablated and stays out if the metric moves by less than ``tau`` (for KL, if KL to the clean run
grows by less than ``tau``). Receivers of a node that no longer feeds anything are dropped
without a run. Since every receiver before the current layer still keeps all its edges, runs
start at the current receiver's layer from the clean cache.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

import torch
from torch import Tensor
from tqdm.auto import tqdm

from circuitfind.graph import Graph
from circuitfind.model import Model
from circuitfind.patching import Ablation, MaskEvaluator, save_checkpoint, with_clean_logits

__all__ = ["acdc"]

logger = logging.getLogger(__name__)


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
    checkpoint: Path | None = None,
    checkpoint_every_s: float = 60.0,
    evaluator: MaskEvaluator | None = None,
) -> tuple[Tensor, Tensor]:
    """Run ACDC. Returns (scores [S, R]: the metric change measured when each edge was tried,
    NaN for edges never tried; kept [S, R] bool).

    With ``checkpoint``, the state (mask, scores, receivers done) is saved there every
    ``checkpoint_every_s`` seconds, and a later call with the same file resumes. ``evaluator``
    reuses prepared runs of the same task and ablation (its metric is replaced by ``metric``).
    """
    if evaluator is None:
        task = with_clean_logits(model, task)
        evaluator = MaskEvaluator(model, graph, task, ablation, batch_size)
    evaluator = evaluator.with_metric(metric)
    name = metric if isinstance(metric, str) else getattr(metric, "name", "")
    one_sided = name == "kl"
    mask = graph.valid.clone().to(torch.float32)
    scores = torch.full((graph.n_senders, graph.n_receivers), float("nan"))
    first = graph.n_receivers - 1  # receivers are visited from the last to the first
    if checkpoint is not None and checkpoint.is_file():
        state = torch.load(checkpoint, weights_only=True)
        if tuple(state["mask"].shape) == tuple(mask.shape) and state["tau"] == tau:
            mask, scores, first = state["mask"], state["scores"], int(state["next"])
            logger.info("resuming ACDC from %s", checkpoint)
    current = evaluator(mask)

    def save(next_receiver: int) -> None:
        if checkpoint is None:
            return
        save_checkpoint(
            checkpoint, {"mask": mask, "scores": scores, "next": next_receiver, "tau": tau}
        )

    last_save = time.monotonic()
    done = int(graph.n_upstream[first + 1 :].sum())
    bar = tqdm(total=graph.n_edges, initial=done, desc="acdc", disable=not progress, unit="edge")
    for r in reversed(range(first + 1)):
        if checkpoint is not None and time.monotonic() - last_save > checkpoint_every_s:
            save(r)
            last_save = time.monotonic()
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
    save(-1)
    return scores, mask.bool() & graph.valid
