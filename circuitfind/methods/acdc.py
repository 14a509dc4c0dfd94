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

import torch
from tqdm.auto import tqdm

from circuitfind.errors import InputError
from circuitfind.patching import save_checkpoint
from circuitfind.runs import PreparedRuns
from circuitfind.scores import Scores

__all__ = ["score_acdc"]

logger = logging.getLogger(__name__)


def score_acdc(
    runs: PreparedRuns,
    *,
    tau: float = 0.01,
    acdc_metric: str = "kl",
    checkpoint_every_s: float = 60.0,
) -> Scores:
    """Run ACDC. Returns scores [S, R] (the metric change measured when each edge was tried,
    NaN for edges never tried) and the kept edges [S, R] bool.

    ``acdc_metric``: ``kl`` (KL to the clean run, one-sided: an edge stays out when KL grows
    by less than ``tau``) or ``task`` (the task's metric, two-sided). With
    ``runs.checkpoint_dir``, the state (mask, scores, receivers done) is saved there every
    ``checkpoint_every_s`` seconds, and a later call with the same directory resumes.
    """
    if acdc_metric not in ("kl", "task"):
        raise InputError(f"acdc_metric must be 'kl' or 'task'; got {acdc_metric!r}")
    if not tau >= 0:
        raise InputError(f"ACDC's tau must be a non-negative number; got {tau!r}")
    model, graph = runs.model, runs.graph
    metric = "kl" if acdc_metric == "kl" else None
    checkpoint = runs.checkpoint_dir / "acdc_checkpoint.pt" if runs.checkpoint_dir else None
    evaluator = runs.evaluator(metric)
    one_sided = acdc_metric == "kl"
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
    bar = tqdm(
        total=graph.n_edges, initial=done, desc="acdc", disable=not runs.progress, unit="edge"
    )
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
    return Scores(
        scores,
        kept=mask.bool() & graph.valid,
        orientation="helps-positive" if one_sided else "ablated-minus-clean",
    )
