"""ACDC (Conmy et al. 2023): iterative pruning in reverse topological order.

Receivers are visited from the logits back to layer 0; each incoming edge is tentatively
ablated and stays out if the metric moves by less than ``tau`` (for KL, if KL to the clean run
grows by less than ``tau``). Receivers of a node that no longer feeds anything are dropped
without a run. Since every receiver before the current layer still keeps all its edges, runs
start at the current receiver's layer from the clean cache.
"""

from __future__ import annotations

import hashlib
import logging
from typing import Any

import torch

from circuitfind.checkpoint import Checkpointer, run_fingerprint
from circuitfind.errors import InputError
from circuitfind.progress import bar as progress_bar
from circuitfind.runs import PreparedRuns
from circuitfind.scores import Scores

__all__ = ["score_acdc"]

logger = logging.getLogger(__name__)


def _digest(edges: torch.Tensor) -> str:
    return hashlib.sha256(edges.to(torch.uint8).numpy().tobytes()).hexdigest()[:16]


def score_acdc(
    runs: PreparedRuns,
    *,
    tau: float = 0.01,
    acdc_metric: str = "kl",
    checkpoint_every_s: float = 60.0,
    checkpoint_every: int = 50,
    try_edges: torch.Tensor | None = None,
) -> Scores:
    """Run ACDC. Returns scores [S, R] (the metric change measured when each edge was tried,
    NaN for edges never tried) and the kept edges [S, R] bool.

    ``acdc_metric``: ``kl`` (KL to the clean run, one-sided: an edge stays out when KL grows
    by less than ``tau``) or ``task`` (the task's metric, two-sided). With
    ``runs.checkpoint_dir``, the state (mask, scores, the metric so far, where the search
    stands) is saved there (``acdc_checkpoint.pt``) every ``checkpoint_every`` edges, every
    ``checkpoint_every_s`` seconds and on SIGINT / SIGTERM; a later call with the same directory
    and the same run (model weights, task, metric, tau, ablation, versions:
    :func:`circuitfind.checkpoint.run_fingerprint`) resumes to the same circuit, a different
    run is refused. The file is removed on success.
    """
    if acdc_metric not in ("kl", "task"):
        raise InputError(f"acdc_metric must be 'kl' or 'task'; got {acdc_metric!r}")
    if not tau >= 0:
        raise InputError(f"ACDC's tau must be a non-negative number; got {tau!r}")
    model, graph, ablation = runs.model, runs.graph, runs.ablation
    checkpoint = runs.checkpoint_dir / "acdc_checkpoint.pt" if runs.checkpoint_dir else None
    metric = "kl" if acdc_metric == "kl" else None
    name = acdc_metric
    evaluator = runs.evaluator(metric, reuse_prefix=True)
    one_sided = acdc_metric == "kl"
    progress = runs.progress
    mask = graph.valid.clone().to(torch.float32)
    tried = graph.valid.clone()
    if try_edges is not None:
        try_edges = torch.as_tensor(try_edges)
        if try_edges.dtype != torch.bool or tuple(try_edges.shape) != tuple(graph.valid.shape):
            raise InputError(
                f"try_edges must be a bool tensor of the graph's shape {tuple(graph.valid.shape)}"
                f" (senders x receivers); got {try_edges.dtype} {tuple(try_edges.shape)}"
            )
        tried &= try_edges.cpu()
    scores = torch.full((graph.n_senders, graph.n_receivers), float("nan"))
    ckpt = Checkpointer(
        checkpoint,
        run_fingerprint(
            model=model,
            task=runs.task,
            method="acdc",
            options={"tau": tau, "try_edges": None if try_edges is None else _digest(tried)},
            ablation=ablation,
            metric=name,
            seed=getattr(runs.task, "meta", {}).get("seed"),
        ),
        total=int(tried.sum()),
        unit="edges tried",
        what="ACDC",
        every=checkpoint_every,
        every_s=checkpoint_every_s,
    )
    with ckpt:
        # receivers are visited from the last to the first; in each, senders from the last
        next_r, next_s, done = graph.n_receivers - 1, -1, 0  # next_s -1: the receiver's start
        state = ckpt.load()
        if state is not None:
            mask, scores, current = state["mask"], state["scores"], float(state["current"])
            next_r, next_s, done = int(state["receiver"]), int(state["sender"]), ckpt.saved_done
        else:
            current = evaluator(mask)

        def snapshot(r: int, s: int) -> dict[str, Any]:
            return {"mask": mask, "scores": scores, "current": current, "receiver": r, "sender": s}

        bar = progress_bar(
            total=int(tried.sum()), initial=done, desc="acdc", disable=not progress, unit="edge"
        )
        for r in reversed(range(next_r + 1)):
            rec = graph.receivers[r]
            upstream = int(graph.n_upstream[r])
            begin = next_s if r == next_r and next_s >= 0 else upstream  # senders left: [0, begin)
            if rec.node != "logits" and begin == upstream:
                sender = graph.sender_index[rec.node]
                if not bool(mask[sender].any()):  # the node feeds nothing any more
                    mask[:upstream, r] = 0
                    n_tried = int(tried[:upstream, r].sum())
                    done += n_tried
                    bar.update(n_tried)
                    ckpt.maybe_save(lambda r=r: snapshot(r - 1, -1), done)  # type: ignore[misc]
                    continue
            # Receivers of layers before this one keep every edge: their senders are clean.
            start_layer = rec.layer if rec.layer is not None else model.cfg.n_layers
            for s in reversed(range(begin)):
                if not tried[s, r]:
                    continue
                mask[s, r] = 0
                value = evaluator(mask, start_layer=start_layer)
                change = value - current
                scores[s, r] = change
                if (change if one_sided else abs(change)) < tau:
                    current = value
                else:
                    mask[s, r] = 1
                done += 1
                bar.update(1)
                if s == 0:
                    ckpt.maybe_save(lambda r=r: snapshot(r - 1, -1), done)  # type: ignore[misc]
                else:
                    ckpt.maybe_save(lambda r=r, s=s: snapshot(r, s), done)  # type: ignore[misc]
        bar.close()
    ckpt.done()
    return Scores(
        scores,
        kept=mask.bool() & graph.valid,
        orientation="helps-positive" if one_sided else "ablated-minus-clean",
    )
