"""``circuitfind.certify``: fast scores, an optional learned mask, the circuit chosen, its
faithfulness verified by real patching, and how well attribution agreed with exact patching
where it mattered (the edges near the cut).

1. Fast scores: an attribution method (``eap-ig-inputs`` by default) scores every edge.
2. Mask (optional, pluggable by method name): a method that learns an edge mask
   (``edge-pruning`` when the method table has it; ``mask=None`` skips the step) runs over the
   same prepared runs, warm-started from the fast scores when its row takes ``init``.
3. The circuit is chosen by the pruning rule (top-n, threshold, or the smallest circuit reaching
   a faithfulness target, 0.9 by default).
4. Its faithfulness is measured by :func:`circuitfind.evaluate`: masked runs with every edge
   outside it ablated (never a linear estimate), with its bootstrap error and reliability flag.
5. The frontier: the ``frontier`` edges whose attribution rank is nearest the cut (half kept,
   half not, by |score|) are each patched alone (metric with only that edge ablated minus the
   clean metric: exact patching's score, from the same masked runs). The report gives the
   Spearman rank correlation of attribution with exact patching there (scipy; with its p-value
   and sample size, signed and by magnitude), the share of frontier edges that exact patching
   puts on the same side of the cut, and the edges where the two disagree most.

Everything lands in ``circuit.meta["certify"]``.
"""

from __future__ import annotations

import logging
import math
import time
from typing import Any

import numpy as np
import torch
from scipy.stats import spearmanr

from circuitfind.circuit import Circuit
from circuitfind.discovery import discover
from circuitfind.errors import InputError
from circuitfind.methods.table import METHODS, method_name, method_spec
from circuitfind.model import Model
from circuitfind.runs import PreparedRuns
from circuitfind.scoring import score
from circuitfind.tasks import Task

__all__ = ["DEFAULT_MASK", "certify", "frontier_agreement", "mask_method"]

logger = logging.getLogger(__name__)

DEFAULT_MASK = "edge-pruning"
N_DISAGREE = 5


def mask_method(mask: str | None) -> str | None:
    """The mask step's method: ``"auto"`` is :data:`DEFAULT_MASK` when the method table has it
    (else none), ``None`` / ``"none"`` skips the step, any other name must be a method."""
    if mask is None or mask.strip().lower() in ("none", "off", ""):
        return None
    if mask.strip().lower() == "auto":
        return DEFAULT_MASK if DEFAULT_MASK in METHODS else None
    return method_name(mask)


def _finite(x: float) -> float | None:
    return float(x) if math.isfinite(x) else None


def frontier_agreement(
    runs: PreparedRuns, attribution: torch.Tensor, n_kept: int, frontier: int = 64
) -> dict[str, Any]:
    """Attribution scores [S, R] against exact patching on the ``frontier`` edges nearest the
    cut at ``n_kept`` (module docstring, step 5)."""
    graph = runs.graph
    ok = graph.valid & ~torch.isnan(attribution)
    s_idx, r_idx = ok.nonzero(as_tuple=True)
    mags = attribution[s_idx, r_idx].abs()
    order = torch.argsort(mags, descending=True, stable=True)
    half = max(1, frontier // 2)
    lo, hi = max(0, n_kept - half), min(order.numel(), n_kept + half)
    picked = order[lo:hi]
    full = runs.metric_of(graph.valid.float())
    clean = float(full.mean())
    names, attr, exact, kept = [], [], [], []
    for rank_pos, p in zip(range(lo, hi), picked.tolist()):
        i, j = int(s_idx[p]), int(r_idx[p])
        mask = graph.valid.clone()
        mask[i, j] = False
        exact.append(float(runs.metric_of(mask.float()).mean()) - clean)
        attr.append(float(attribution[i, j]))
        names.append(graph.edge_name(i, j))
        kept.append(rank_pos < n_kept)
    out: dict[str, Any] = {
        "n": len(names),
        "cut_rank": n_kept,
        "ranks": [lo, hi],
        "edges": [
            {"edge": n, "attribution": a, "exact": e, "in_circuit": k}
            for n, a, e, k in zip(names, attr, exact, kept)
        ],
    }
    if len(names) < 3:
        out.update(spearman=None, spearman_p=None, spearman_abs=None, disagree=[])
        out["note"] = "fewer than 3 frontier edges: no rank correlation"
        return out
    a, e = np.array(attr), np.array(exact)
    rho, p_value = spearmanr(a, e)
    rho_abs, p_abs = spearmanr(np.abs(a), np.abs(e))
    rank_a = np.argsort(np.argsort(-np.abs(a), kind="stable"), kind="stable")
    rank_e = np.argsort(np.argsort(-np.abs(e), kind="stable"), kind="stable")
    n_in = sum(kept)
    same_side = float(np.mean((rank_e < n_in) == np.array(kept))) if n_in else None
    worst = np.argsort(-np.abs(rank_a - rank_e), kind="stable")[:N_DISAGREE]
    out.update(
        spearman=_finite(float(rho)),
        spearman_p=_finite(float(p_value)),
        spearman_abs=_finite(float(rho_abs)),
        spearman_abs_p=_finite(float(p_abs)),
        same_side_of_cut=same_side,
        disagree=[
            {
                "edge": names[k],
                "attribution": attr[k],
                "exact": exact[k],
                "rank_attribution": int(rank_a[k]) + lo,
                "rank_exact": int(rank_e[k]) + lo,
                "in_circuit": kept[k],
            }
            for k in worst.tolist()
        ],
    )
    return out


def certify(
    model: Model,
    task: Task,
    *,
    method: str = "eap-ig-inputs",
    mask: str | None = "auto",
    ablation: str = "resample",
    top_n: int | None = None,
    threshold: float | None = None,
    target_faithfulness: float | None = None,
    greedy_growth: bool = False,
    frontier: int = 64,
    curve: bool = False,
    batch_size: int = 32,
    progress: bool = False,
    checkpoint_dir: Any = None,
    seed: int | None = None,
    bootstrap: int | str | None = 0,
    ensemble: Any = None,
    **options: Any,
) -> Circuit:
    """The certified pipeline (module docstring): a circuit whose faithfulness was measured by
    patching, with ``meta["certify"]`` saying how it was made and how well its attribution
    scores agreed with exact patching near the cut.

    Args:
        method: the fast attribution method (a row of the method table).
        mask: the mask step's method (``"auto"``: ``edge-pruning`` when registered; None: none).
        frontier: how many edges around the cut are patched one by one to check attribution.
        ensemble: other methods run over the same prepared runs (``discover``'s); the fast
            scores' method options only go to the fast method and the mask.
        Other arguments are :func:`circuitfind.discover`'s.
    """
    if isinstance(frontier, bool) or not isinstance(frontier, int) or frontier < 0:
        raise InputError(f"frontier must be a non-negative number of edges; got {frontier!r}")
    t0 = time.perf_counter()
    fast_name = method_spec(method).name
    masker = mask_method(mask)
    common: dict[str, Any] = {
        "ablation": ablation,
        "top_n": top_n,
        "threshold": threshold,
        "target_faithfulness": target_faithfulness,
        "greedy_growth": greedy_growth,
        "curve": curve,
        "batch_size": batch_size,
        "progress": progress,
        "checkpoint_dir": checkpoint_dir,
        "seed": seed,
        "bootstrap": bootstrap,
        "ensemble": ensemble,
    }
    if masker is None:
        circuit = discover(model, task, method=fast_name, **common, **options)
        fast = circuit
    else:
        fast = score(
            model,
            task,
            method=fast_name,
            ablation=ablation,
            batch_size=batch_size,
            progress=progress,
            seed=seed,
            **options,
        )
        extra = dict(options)
        if "init" in method_spec(masker).options:
            extra["init"] = fast_name  # warm start from the fast scores' method
        circuit = discover(model, task, method=masker, runs=fast.runs, **common, **extra)
    runs = circuit.runs
    assert runs is not None
    t1 = time.perf_counter()
    agreement = frontier_agreement(runs, fast.score_matrix, circuit.n_edges, frontier)
    target = (circuit.meta.get("pruning") or {}).get("target")
    ev = circuit.meta["evaluation"]
    faith = ev.get("faithfulness")
    verified = {
        "faithfulness": faith,
        "stderr": ev.get("faithfulness_stderr"),
        "ci": ev.get("faithfulness_ci"),
        "reliable": ev.get("reliable"),
        "n_prompts": ev.get("n_prompts"),
        "by": "masked runs: every edge outside the circuit ablated (circuitfind.evaluate)",
        "target": target,
        "meets_target": None if target is None or faith is None else bool(faith >= target),
    }
    circuit.meta["certify"] = {
        "attribution_method": fast_name,
        "mask_method": masker,
        "mask_requested": mask,
        "n_edges": circuit.n_edges,
        "verified": verified,
        "frontier": agreement,
        "frontier_s": round(time.perf_counter() - t1, 4),
        "time_s": round(time.perf_counter() - t0, 4),
    }
    return circuit
