"""``circuitfind.discover``: score every edge, prune to a minimal circuit, measure it."""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

from circuitfind.circuit import Circuit
from circuitfind.evaluation import circuit_orientation, evaluate
from circuitfind.model import Model
from circuitfind.scoring import score
from circuitfind.search import prune
from circuitfind.tasks import Task

__all__ = ["discover"]

logger = logging.getLogger(__name__)


def discover(
    model: Model,
    task: Task,
    *,
    method: str = "eap-ig-inputs",
    ablation: str = "resample",
    top_n: int | None = None,
    threshold: float | None = None,
    target_faithfulness: float | None = None,
    greedy_growth: bool = False,
    curve: bool = False,
    batch_size: int = 32,
    progress: bool = True,
    checkpoint_dir: str | Path | None = None,
    seed: int | None = None,
    **options: Any,
) -> Circuit:
    """Find the circuit of ``model`` that does ``task``: :func:`circuitfind.score`, then
    :func:`circuitfind.prune`, then :func:`circuitfind.evaluate`, over one set of prepared runs.

    Args:
        method: a row of ``circuitfind.methods.METHODS`` (exact, acdc, eap, eap-ig-inputs,
            eap-ig-activations, node, or one registered at run time).
        ablation: what an edge outside the circuit carries: resample (the corrupted prompt's
            value), mean, mean-positional or zero.
        top_n / threshold / target_faithfulness: how to prune (at most one; default: the
            smallest circuit reaching faithfulness 0.9, verified by patching). ACDC prunes
            itself and ignores them.
        greedy_growth: with ``top_n``, grow from the logits (EAP-IG's greedy) instead.
        curve: also measure the faithfulness curves, CPR and CMD (reusing every circuit the
            search measured).
        checkpoint_dir: where long runs (exact, acdc) checkpoint and resume.
        **options: the method's options (``steps``, ``tau``, ``acdc_metric``, ...).

    Returns:
        A ``Circuit`` with every edge's score; ``meta`` holds the metric of the full model, the
        circuit and the empty circuit, the faithfulness with its error and reliability flag
        (``meta["evaluation"]``), how the circuit was found, and the time of each phase.
    """
    t0 = time.perf_counter()
    scored = score(
        model,
        task,
        method=method,
        ablation=ablation,
        batch_size=batch_size,
        progress=progress,
        checkpoint_dir=checkpoint_dir,
        seed=seed,
        **options,
    )
    t1 = time.perf_counter()
    circuit = prune(
        scored,
        top_n=top_n,
        threshold=threshold,
        target_faithfulness=target_faithfulness,
        greedy=greedy_growth,
    )
    t2 = time.perf_counter()
    ev = evaluate(model, task, circuit, curve=curve, runs=scored.runs, seed=seed or 0)
    t3 = time.perf_counter()
    timing = {
        **scored.meta["timing"],
        "pruning_s": round(t2 - t1, 4),
        "evaluation_s": round(t3 - t2, 4),
        "total_s": round(t3 - t0, 4),
    }
    circuit.meta.update(
        {
            "metrics": {
                "full": ev.metric_full,
                "circuit": ev.metric_circuit,
                "empty": ev.metric_empty,
            },
            "score_orientation": circuit_orientation(circuit, ev.metric_full, ev.metric_empty),
            "faithfulness": ev.faithfulness,
            "faithfulness_stderr": ev.faithfulness_stderr,
            "effect": ev.effect,
            "effect_stderr": ev.effect_stderr,
            "reliable": ev.reliable,
            "warning": ev.warning,
            "evaluation": ev.to_dict(),
            "n_edges": circuit.n_edges,
            "n_edges_total": circuit.n_edges_total,
            "timing": timing,
            "time_s": timing["total_s"],
            "scoring_time_s": timing["scoring_s"],
        }
    )
    return circuit
