"""``circuitfind.certify``: fast scores, an optional learned mask, the circuit chosen, its
faithfulness verified by real patching, and how well attribution agreed with exact patching
where it mattered (the edges near the cut).

1. Fast scores: an attribution method (``eap-ig-inputs`` by default) scores every edge.
2. Mask (optional, pluggable by method name): a method that learns an edge mask
   (``edge-pruning`` when the method table has it; ``mask=None`` skips the step) runs over the
   same prepared runs, warm-started from the fast scores when its row takes ``init``.
3. Selection by patching: every candidate ranking of the edges (``candidates="auto"``: the fast
   scores, the mask warm-started from them, the mask from a cold start, and exact patching when
   one forward per edge costs no more than the mask's training, see :func:`plan_candidates`) gets
   its faithfulness curve measured by masked runs at :data:`circuitfind.evaluation.CURVE_PERCENTS`
   of the edges, and the one with the largest CPR (area under that curve, MIB's circuit
   performance ratio) is kept; ties go to the earlier, cheaper candidate. The same prompts choose
   and measure, as they do for every single method's CPR, so the chosen CPR is optimistic by the
   choice among a few candidates: ``meta["certify"]["candidates"]`` keeps each one's CPR with its
   bootstrap error so the margin can be read against the noise.
4. The circuit is chosen from that ranking by the pruning rule (top-n, threshold, or the
   smallest circuit reaching a faithfulness target, 0.9 by default).
5. Its faithfulness is measured by :func:`circuitfind.evaluate`: masked runs with every edge
   outside it ablated (never a linear estimate), with its bootstrap error and reliability flag.
6. The frontier: the ``frontier`` edges whose attribution rank is nearest the cut (half kept,
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
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from scipy.stats import spearmanr

from circuitfind.circuit import Circuit
from circuitfind.discovery import finish
from circuitfind.errors import InputError
from circuitfind.evaluation import evaluate
from circuitfind.methods.table import METHODS, method_name, method_spec
from circuitfind.model import Model
from circuitfind.positions import position_edge_name
from circuitfind.runs import PreparedRuns
from circuitfind.scoring import score
from circuitfind.tasks import Task

__all__ = [
    "DEFAULT_MASK",
    "Candidate",
    "certify",
    "frontier_agreement",
    "mask_method",
    "plan_candidates",
]

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


@dataclass(frozen=True)
class Candidate:
    """One ranking the selection step measures: a method of the table with its options."""

    label: str
    method: str
    options: dict[str, Any] = field(default_factory=dict)


def _floor(method: str, options: dict[str, Any]) -> float | None:
    """The method's floor in bare forwards (B = 2F), per run or per edge (its table unit)."""
    spec = method_spec(method)
    return None if spec.floor is None else float(spec.floor(1.0, 2.0, options))


def plan_candidates(
    fast: str,
    masker: str | None,
    n_terms: int,
    candidates: str | list[str] | tuple[str, ...] | None = "auto",
    options: dict[str, Any] | None = None,
) -> list[Candidate]:
    """The rankings the selection step compares (module docstring, step 3).

    ``"auto"``: the fast method; with a mask step, the mask warm-started from the fast scores
    (when the mask takes ``init``) and the mask from a cold start; and ``exact`` when one
    forward per scored term (``n_terms``: edges, or (edge, column) terms with positions) costs
    no more than the mask's training (its table floor: ``train_steps`` x (F + B), B = 2F), so
    the selection at most doubles the mask's cost. ``None`` / ``"none"``: the one ranking the
    pipeline makes (the mask's, or the fast method's without a mask), nothing compared. A list
    (or ``"eap-ig-inputs,ugs,exact"``) names the methods to compare, each over the same prepared
    runs; the mask's name there means its warm start, and ``<mask>:cold`` its cold start.
    """
    from circuitfind.methods.table import method_options

    opts = {k: v for k, v in (options or {}).items() if k != "positions"}  # score's, not a method's
    takes_init = masker is not None and "init" in method_spec(masker).options
    warm = (
        Candidate(f"{masker} (warm start from {fast})", masker, {"init": fast})
        if (masker is not None and takes_init)
        else None
    )
    cold = (
        Candidate(masker, masker, {"init": "none"} if takes_init else {})
        if masker is not None
        else None
    )
    if candidates is None or (isinstance(candidates, str) and candidates.lower() == "none"):
        if masker is None:
            return [Candidate(fast, fast)]
        return [warm or cold]  # type: ignore[list-item]
    if isinstance(candidates, str) and candidates.lower() == "auto":
        out = [Candidate(fast, fast)]
        out += [c for c in (warm, cold) if c is not None]
        if masker is not None and "exact" in METHODS and fast != "exact":
            mask_cost = _floor(masker, method_options(method_spec(masker), opts))
            per_edge = _floor("exact", method_options(method_spec("exact"), opts))
            if mask_cost is not None and per_edge is not None and n_terms * per_edge <= mask_cost:
                out.append(Candidate("exact", "exact"))
        return out
    names = candidates.split(",") if isinstance(candidates, str) else list(candidates)
    out = []
    for raw in (n.strip() for n in names):
        if not raw:
            continue
        base, _, how = raw.partition(":")
        name = method_name(base)
        if how not in ("", "cold", "warm"):
            raise InputError(
                f"certify candidate {raw!r}: after the method name only ':cold' or ':warm' "
                "(a learned mask's start) may follow"
            )
        if how and "init" not in method_spec(name).options:
            raise InputError(f"certify candidate {raw!r}: {name} takes no warm start")
        if name == masker and how != "cold" and warm is not None:
            out.append(warm)
        elif how == "warm":
            out.append(Candidate(f"{name} (warm start from {fast})", name, {"init": fast}))
        elif how == "cold":
            out.append(Candidate(name, name, {"init": "none"}))
        else:
            out.append(Candidate(name, name))
    if not out:
        raise InputError("certify: candidates names no method; pass 'auto' or method names")
    labels = [c.label for c in out]
    if len(set(labels)) < len(labels):
        raise InputError(f"certify: a candidate is named twice in {', '.join(labels)}")
    return out


def _finite(x: float | None) -> float | None:
    return None if x is None or not math.isfinite(x) else float(x)


def _best(rows: list[dict[str, Any]]) -> int:
    """The candidate with the largest CPR (the first on ties; one without a CPR loses)."""
    cprs = [r.get("cpr") for r in rows]
    if len(rows) == 1 or all(c is None for c in cprs):
        return 0
    return max(range(len(rows)), key=lambda i: (cprs[i] is not None, cprs[i] or 0.0, -i))


def _candidate_dir(checkpoint_dir: Any, cand: Candidate, *, first: bool) -> Any:
    """The mask step's own candidate checkpoints where it always did; each other candidate
    in a subdirectory of its own, so two runs of one method never share a checkpoint file."""
    if checkpoint_dir is None or first:
        return checkpoint_dir
    from pathlib import Path

    slug = "".join(ch if ch.isalnum() else "-" for ch in cand.label.lower()).strip("-")
    return Path(checkpoint_dir) / f"certify-{slug}"


def frontier_agreement(
    runs: PreparedRuns, attribution: torch.Tensor, n_kept: int, frontier: int = 64
) -> dict[str, Any]:
    """Attribution scores [S, R] (or [S, R, P] (edge, column) terms over the runs' position
    layout) against exact patching on the ``frontier`` edges nearest the cut at ``n_kept``
    (module docstring, step 6)."""
    graph = runs.graph
    valid = graph.valid
    columns: tuple[str, ...] | None = None
    if attribution.dim() == 3:  # (edge, column) terms of the runs' position layout
        if runs.layout is None or runs.layout.n_columns != attribution.shape[2]:
            raise InputError("position-aware scores need the runs' position layout")
        columns = runs.layout.names
        valid = valid[..., None].expand_as(attribution)
    ok = valid & ~torch.isnan(attribution)
    where = ok.nonzero()  # [terms, 2 or 3]
    mags = attribution[tuple(where.T)].abs()
    order = torch.argsort(mags, descending=True, stable=True)
    half = max(1, frontier // 2)
    lo, hi = max(0, n_kept - half), min(order.numel(), n_kept + half)
    picked = order[lo:hi]
    full = runs.metric_of(valid.float())
    clean = float(full.mean())
    names, attr, exact, kept = [], [], [], []
    for rank_pos, p in zip(range(lo, hi), picked.tolist()):
        ix = tuple(int(x) for x in where[p])
        mask = valid.clone()
        mask[ix] = False
        exact.append(float(runs.metric_of(mask.float()).mean()) - clean)
        attr.append(float(attribution[ix]))
        name = graph.edge_name(ix[0], ix[1])
        names.append(name if columns is None else position_edge_name(name, columns[ix[2]]))
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
    candidates: str | list[str] | tuple[str, ...] | None = "auto",
    **options: Any,
) -> Circuit:
    """The certified pipeline (module docstring): a circuit whose faithfulness was measured by
    patching, with ``meta["certify"]`` saying how it was made and how well its attribution
    scores agreed with exact patching near the cut.

    Args:
        method: the fast attribution method (a row of the method table).
        mask: the mask step's method (``"auto"``: ``edge-pruning`` when registered; None: none).
        frontier: how many edges around the cut are patched one by one to check attribution.
        candidates: the rankings compared by patched CPR before the circuit is chosen
            (:func:`plan_candidates`: ``"auto"``, ``None`` for none, or method names).
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
    fast = score(
        model,
        task,
        method=fast_name,
        ablation=ablation,
        batch_size=batch_size,
        progress=progress,
        checkpoint_dir=checkpoint_dir if masker is None else None,
        seed=seed,
        **options,
    )
    n_terms = int((~torch.isnan(fast.score_matrix)).sum())
    plan = plan_candidates(fast_name, masker, n_terms, candidates, dict(options))
    home = next((i for i, c in enumerate(plan) if c.method == masker), None)
    scored: list[Circuit] = []
    rows: list[dict[str, Any]] = []
    for k, cand in enumerate(plan):
        t = time.perf_counter()
        if cand.method == fast_name and not cand.options:
            c = fast
        else:
            c = score(
                model,
                task,
                method=cand.method,
                ablation=ablation,
                batch_size=batch_size,
                progress=progress,
                checkpoint_dir=_candidate_dir(checkpoint_dir, cand, first=k == home),
                seed=seed,
                runs=fast.runs,
                **{**options, **cand.options},
            )
        row: dict[str, Any] = {
            "label": cand.label,
            "method": cand.method,
            "options": dict(cand.options),
            "score_s": round(time.perf_counter() - t, 4),
        }
        if len(plan) > 1:
            ev = evaluate(model, task, c, curve=True, runs=fast.runs, seed=seed or 0)
            row.update(cpr=_finite(ev.cpr), cpr_stderr=_finite(ev.cpr_stderr), cmd=_finite(ev.cmd))
        scored.append(c)
        rows.append(row)
    best = _best(rows)
    circuit = finish(
        scored[best],
        **{k: v for k, v in common.items() if k not in ("ablation", "checkpoint_dir")},
        started=t0,
        **{**options, **plan[best].options},
    )
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
        "candidates": rows,
        "chosen": plan[best].label,
        "chosen_method": plan[best].method,
        "selection": (
            "largest CPR, measured by masked runs on these prompts (the same prompts choose and "
            "measure: optimistic by the choice)"
            if len(rows) > 1
            else "one candidate: nothing compared"
        ),
        "n_edges": circuit.n_edges,
        "verified": verified,
        "frontier": agreement,
        "frontier_s": round(time.perf_counter() - t1, 4),
        "time_s": round(time.perf_counter() - t0, 4),
    }
    return circuit
