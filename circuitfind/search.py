"""``circuitfind.prune``: keep a scored circuit's edges by one rule, or search for the smallest
circuit that reaches a target faithfulness.

The search evaluates the circuit sizes of the faithfulness curve first (MIB's int(pct x edges)
grid; a doubling grid for greedy growth and node-level methods), then bisects between the last
size that misses the target and the first that reaches it. Every size it measures goes through
the prepared runs' memo, so the curve that ``evaluate(..., curve=True)`` draws afterwards costs
nothing for those sizes. A target never counts as met when the effect it is a fraction of is
not above its noise (:mod:`circuitfind.evaluation`).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from torch import Tensor

from circuitfind.circuit import Circuit
from circuitfind.errors import InputError
from circuitfind.evaluation import _effect_check, baseline, curve_sizes, faithfulness
from circuitfind.model import Model
from circuitfind.pruning import greedy as greedy_top
from circuitfind.pruning import node_selection
from circuitfind.pruning_positions import remove_dangling
from circuitfind.pruning_positions import threshold as threshold_mask
from circuitfind.pruning_positions import top_n as top_n_mask
from circuitfind.runs import PreparedRuns
from circuitfind.tasks import Task

__all__ = ["prune", "search_target"]

logger = logging.getLogger(__name__)


def _grid(size: int, curve_grid: bool) -> list[int]:
    if curve_grid:
        points = {n for n in curve_sizes(size) if n > 0}
    else:
        points, n = set(), 1
        while n < size:
            points.add(n)
            n *= 2
    return sorted(points | {size})


def search_target(
    select: Callable[[int], Tensor],
    runs: PreparedRuns,
    target: float,
    size: int,
    *,
    greedy: bool = False,
) -> tuple[Tensor, dict[str, Any]]:
    """(kept edges, the pruning record) of the smallest n whose circuit ``select(n)`` reaches
    ``target`` (searched over n in 1..size)."""
    full, empty = baseline(runs)
    m_full, m_empty = float(full.mean()), float(empty.mean())
    _, _, reliable, warning = _effect_check(full, empty)
    info: dict[str, Any] = {"rule": "target-faithfulness", "target": target}
    if not reliable:
        logger.warning("target faithfulness not verifiable, keeping every edge: %s", warning)
        return select(size), {**info, "n": size, "met": False, "reason": warning}
    seen: dict[int, float] = {}

    def f(n: int) -> float:
        if n not in seen:
            seen[n] = faithfulness(float(runs.metric_of(select(n).float()).mean()), m_full, m_empty)
        return seen[n]

    lo = 0
    hi = None
    for n in _grid(size, curve_grid=not greedy):
        if f(n) >= target:
            hi = n
            break
        lo = n
    if hi is None:
        reason = f"no circuit reaches faithfulness {target:.2f} (the full model gives 1.0)"
        logger.warning("%s; keeping every edge", reason)
        return select(size), {**info, "n": size, "met": False, "reason": reason}
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if f(mid) >= target:
            hi = mid
        else:
            lo = mid
    return select(hi), {**info, "n": hi, "met": True, "sizes_measured": len(seen)}


def prune(
    circuit: Circuit,
    *,
    top_n: int | None = None,
    threshold: float | None = None,
    target_faithfulness: float | None = None,
    greedy: bool = False,
    model: Model | None = None,
    task: Task | None = None,
    runs: PreparedRuns | None = None,
) -> Circuit:
    """Keep the edges of a scored circuit (at most one rule; default: target faithfulness 0.9).

    ``top_n`` keeps the n highest-|score| edges (nodes, for node-level methods; with
    ``greedy``, grown from the logits as EAP-IG's greedy); ``threshold`` those with |score| >=
    it; ``target_faithfulness`` the smallest top-n circuit whose patched faithfulness reliably
    reaches the target (needs the prepared runs: the scored circuit's own, or ``model`` and
    ``task``). A method that pruned itself (ACDC) keeps its own choice. Edges not on a path
    from ``input`` to ``logits`` are dropped. The rule is recorded in ``meta["pruning"]``.
    """
    chosen = [x is not None for x in (top_n, threshold, target_faithfulness)]
    if sum(chosen) > 1:
        raise InputError("give at most one of top_n, threshold and target_faithfulness")
    if top_n is not None and top_n < 0:
        raise InputError(f"top-n must be a non-negative integer; got {top_n}")
    if threshold is not None and not threshold >= 0:
        raise InputError(f"the threshold is on |score| and must be >= 0; got {threshold}")
    if target_faithfulness is not None and not 0 < target_faithfulness <= 2:
        raise InputError(
            f"target faithfulness must be in (0, 2] (1 = the full model); got {target_faithfulness}"
        )
    graph = circuit.graph
    nodes = circuit.node_scores if circuit.meta.get("level") == "node" else None
    if circuit.positions is not None and greedy:
        raise InputError("greedy growth is for position-free circuits; use top_n with positions")

    def select(n: int) -> Tensor:
        if nodes is not None:
            return remove_dangling(graph, node_selection(graph, nodes, n))
        picked = (
            greedy_top(graph, circuit.score_matrix, n)
            if greedy
            else top_n_mask(graph, circuit.score_matrix, n)
        )
        return remove_dangling(graph, picked)

    info: dict[str, Any]
    if circuit.meta.get("prunes_itself"):
        keep = remove_dangling(graph, circuit.in_graph)
        info = {"rule": circuit.meta["method"], **circuit.meta.get("options", {})}
    elif top_n is not None:
        keep = select(top_n)
        info = {"rule": "greedy" if greedy else "top-n", "n": top_n}
    elif threshold is not None:
        if nodes is not None:
            keep = select(sum(abs(v) >= threshold for v in nodes.values()))
        else:
            keep = remove_dangling(graph, threshold_mask(graph, circuit.score_matrix, threshold))
        info = {"rule": "threshold", "threshold": threshold}
    else:
        target = 0.9 if target_faithfulness is None else target_faithfulness
        if runs is None:
            runs = circuit.runs
        if runs is None:
            if model is None or task is None:
                raise InputError(
                    "pruning to a target faithfulness runs the model: pass model= and task= "
                    "(or prune a circuit that circuitfind.score made)"
                )
            from circuitfind.scoring import prepare

            runs = prepare(model, task, circuit.meta.get("ablation", "resample"))
        if circuit.positions is not None:
            from circuitfind.positions import attach_layout

            attach_layout(runs, circuit.positions, circuit.meta)
        size = len(nodes) if nodes is not None else circuit.n_edges_total
        keep, info = search_target(select, runs, target, size, greedy=greedy or nodes is not None)
    out = circuit.with_edges(keep, pruning=info)
    return out
