"""``circuitfind.discover``: score every edge, prune to a minimal circuit, measure it."""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from circuitfind.circuit import Circuit
from circuitfind.errors import InputError
from circuitfind.evaluation import circuit_orientation, evaluate
from circuitfind.model import Model
from circuitfind.scoring import score
from circuitfind.search import prune
from circuitfind.tasks import Task

__all__ = ["discover", "finish"]

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
    batch_size: int | str = "auto",
    max_memory: int | str | None = None,
    progress: bool = True,
    checkpoint_dir: str | Path | None = None,
    seed: int | None = None,
    bootstrap: int | str | None = 0,
    ensemble: Sequence[str] | str | None = None,
    runs: Any = None,
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
        batch_size, max_memory: prompts a batch, or ``"auto"`` to fit the memory budget
            ``max_memory`` (default: what the device has free); see :func:`circuitfind.score`.
        bootstrap: resample the prompts this many times (or ``"auto"``: the rule of
            :func:`circuitfind.stability.default_bootstrap`; 0 = off), re-score and re-prune
            with the same rule: per-edge inclusion frequencies, the core / contingent split and
            intervals on faithfulness (and CPR / CMD with ``curve``) in ``meta["stability"]``.
        ensemble: other methods (a list or ``"eap,exact"``) run over the same prepared runs
            and pruned by the same rule; per-edge agreement across them in ``meta["ensemble"]``.
        runs: prepared runs to reuse (when they match model, task, ablation and batch size).
        **options: the method's options (``steps``, ``tau``, ``acdc_metric``, ...).

    Returns:
        A ``Circuit`` with every edge's score; ``meta`` holds the metric of the full model, the
        circuit and the empty circuit, the faithfulness with its error and reliability flag
        (``meta["evaluation"]``), how the circuit was found, and the time of each phase.
    """
    from circuitfind.methods.table import method_name
    from circuitfind.stability import resolve_bootstrap

    resolve_bootstrap(bootstrap, method_name(method), 0)  # a bad value fails before the work
    t0 = time.perf_counter()
    scored = score(
        model,
        task,
        method=method,
        ablation=ablation,
        batch_size=batch_size,
        max_memory=max_memory,
        progress=progress,
        checkpoint_dir=checkpoint_dir,
        seed=seed,
        runs=runs,
        **options,
    )
    return finish(
        scored,
        top_n=top_n,
        threshold=threshold,
        target_faithfulness=target_faithfulness,
        greedy_growth=greedy_growth,
        curve=curve,
        batch_size=batch_size,
        progress=progress,
        seed=seed,
        bootstrap=bootstrap,
        ensemble=ensemble,
        started=t0,
        **options,
    )


def finish(
    scored: Circuit,
    *,
    top_n: int | None = None,
    threshold: float | None = None,
    target_faithfulness: float | None = None,
    greedy_growth: bool = False,
    curve: bool = False,
    batch_size: int | str = "auto",
    progress: bool = True,
    seed: int | None = None,
    bootstrap: int | str | None = 0,
    ensemble: Sequence[str] | str | None = None,
    started: float | None = None,
    **options: Any,
) -> Circuit:
    """The rest of :func:`discover` for a circuit :func:`circuitfind.score` made (over its own
    prepared runs): prune, evaluate, record, and the bootstrap / ensemble. ``options`` are the
    method options the scores were made with (the ensemble's other methods get them too)."""
    runs = scored.runs
    if runs is None:
        raise InputError("finish needs a circuit made by circuitfind.score (with its runs)")
    model, task, ablation = runs.model, runs.task, runs.kind
    t0 = time.perf_counter() if started is None else started
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
    same = {  # what an ensemble's other methods share with this one
        "model": model,
        "task": task,
        "ablation": ablation,
        "top_n": top_n,
        "threshold": threshold,
        "target_faithfulness": target_faithfulness,
        "greedy_growth": greedy_growth,
        "batch_size": batch_size,
        "seed": seed,
        **options,
    }
    _stability(circuit, bootstrap, ensemble, curve, progress, seed, same)
    return circuit


def _stability(
    circuit: Circuit,
    bootstrap: int | str | None,
    ensemble: Sequence[str] | str | None,
    curve: bool,
    progress: bool,
    seed: int | None,
    again: dict[str, Any],
) -> None:
    """The bootstrap and the ensemble of :func:`discover`, recorded in the circuit's meta."""
    from circuitfind.methods.table import method_name
    from circuitfind.stability import agreement, resolve_bootstrap
    from circuitfind.stability import bootstrap as run_bootstrap

    method = circuit.meta["method"]
    n_boot = resolve_bootstrap(bootstrap, method, circuit.n_edges_total)  # (edge, column) terms
    if n_boot:
        t = time.perf_counter()
        st = run_bootstrap(circuit, n_boot, seed=seed or 0, curve=curve, progress=progress)
        circuit.meta["stability"] = st.to_meta(circuit)
        circuit.meta["timing"]["stability_s"] = round(time.perf_counter() - t, 4)
    if ensemble:
        names = ensemble.split(",") if isinstance(ensemble, str) else list(ensemble)
        methods = list(dict.fromkeys(method_name(m.strip()) for m in names if m.strip()))
        t = time.perf_counter()
        circuits = {method: circuit}
        for other in methods:
            if other not in circuits:
                circuits[other] = discover(
                    method=other, runs=circuit.runs, progress=progress, **again
                )
        circuit.meta["ensemble"] = agreement(circuits)
        circuit.meta["timing"]["ensemble_s"] = round(time.perf_counter() - t, 4)
