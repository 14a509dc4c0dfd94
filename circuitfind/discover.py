"""``circuitfind.discover``: score every edge, prune to a minimal circuit, measure it."""

from __future__ import annotations

import logging
import platform
import time
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from circuitfind import prune
from circuitfind.circuit import Circuit
from circuitfind.errors import InputError, choose
from circuitfind.evaluate import faithfulness
from circuitfind.graph import Graph
from circuitfind.methods import acdc, eap_scores, exact_scores, node_scores
from circuitfind.model import Model
from circuitfind.patching import Ablation, MaskEvaluator, ablation_kind, with_clean_logits

__all__ = ["METHODS", "discover", "method_name"]

logger = logging.getLogger(__name__)

METHODS: dict[str, str] = {
    "exact": "exact activation patching of every edge",
    "acdc": "ACDC iterative pruning (Conmy et al. 2023)",
    "eap": "edge attribution patching",
    "eap-ig-inputs": "EAP with integrated gradients over the input embeddings",
    "eap-ig-activations": "EAP with integrated gradients over every node's activations",
    "node": "node (head / MLP) ablation",
}
_ALIASES = {
    "eap-ig": "eap-ig-inputs",
    "eapig": "eap-ig-inputs",
    "eap-ig-input": "eap-ig-inputs",
    "eap-ig-acts": "eap-ig-activations",
    "eap-ig-activation": "eap-ig-activations",
    "patching": "exact",
    "activation-patching": "exact",
    "edge-patching": "exact",
    "node-ablation": "node",
}


def method_name(method: str) -> str:
    """The canonical name of a method from any common spelling (``eap_ig``, ``EAP-IG``,
    ``patching``); an unknown one is an error naming the choices."""
    return choose(method, METHODS, _ALIASES, "method", " (eap-ig = eap-ig-inputs)")


def _versions() -> dict[str, str]:
    import transformers

    from circuitfind import __version__

    return {
        "circuitfind": __version__,
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "python": platform.python_version(),
    }


def _node_edge_scores(graph: Graph, scores: dict[str, float]) -> Tensor:
    """Edge scores from node scores: an edge matters as much as its weaker end."""
    big = float("inf")
    s_val = torch.tensor(
        [abs(scores.get(n.name, big)) if n.kind != "input" else big for n in graph.senders]
    )
    r_val = torch.tensor(
        [abs(scores.get(r.node, big)) if r.node != "logits" else big for r in graph.receivers]
    )
    out = torch.minimum(s_val[:, None], r_val[None, :])
    out[torch.isinf(out)] = 0.0
    out[~graph.valid] = float("nan")
    return out


def _node_selection(graph: Graph, scores: dict[str, float], n_nodes: int) -> Tensor:
    ranked = sorted(scores, key=lambda k: -abs(scores[k]))[:n_nodes]
    keep_nodes = {"input", "logits", *ranked}
    s_ok = torch.tensor([n.name in keep_nodes for n in graph.senders])
    r_ok = torch.tensor([r.node in keep_nodes for r in graph.receivers])
    return graph.valid & s_ok[:, None] & r_ok[None, :]


def discover(
    model: Model,
    task: Any,
    *,
    method: str = "eap-ig-inputs",
    ablation: str = "resample",
    top_n: int | None = None,
    threshold: float | None = None,
    target_faithfulness: float | None = None,
    greedy_growth: bool = False,
    steps: int = 5,
    tau: float = 0.01,
    acdc_metric: str = "kl",
    batch_size: int = 32,
    progress: bool = True,
    checkpoint_dir: str | Path | None = None,
    seed: int | None = None,
) -> Circuit:
    """Find the circuit of ``model`` that does ``task``.

    Args:
        method: exact, acdc, eap, eap-ig-inputs, eap-ig-activations or node.
        ablation: what an edge outside the circuit carries: resample (the corrupted prompt's
            value), mean, mean-positional or zero.
        top_n / threshold / target_faithfulness: how to prune (at most one). ``top_n`` keeps the
            n highest-|score| edges (nodes for ``node``); ``threshold`` those with |score| >= it;
            ``target_faithfulness`` the smallest top-n circuit whose patched faithfulness reaches
            the target (searched over n, verified by patching). Default: target 0.9. ACDC prunes
            itself (``tau``) and ignores these.
        greedy_growth: with ``top_n``, grow from the logits (EAP-IG's greedy) instead.
        steps: integrated-gradient steps (EAP-IG).
        tau, acdc_metric: ACDC's threshold and metric (``kl`` or ``task``).
        checkpoint_dir: where long runs (exact, acdc) checkpoint and resume.

    Returns:
        A ``Circuit`` with every edge's score and ``meta`` holding the metric of the full model,
        the circuit and the empty circuit, its faithfulness and how it was found.
    """
    method = method_name(method)
    ablation = ablation_kind(ablation)
    chosen = [x is not None for x in (top_n, threshold, target_faithfulness)]
    if sum(chosen) > 1:
        raise InputError("give at most one of top_n, threshold and target_faithfulness")
    if not any(chosen):
        target_faithfulness = 0.9
    if len(task) == 0:
        raise InputError("the task has no prompts")
    if seed is not None:
        torch.manual_seed(seed)
    t0 = time.perf_counter()
    graph = Graph.from_model(model)
    task = with_clean_logits(model, task)
    abl = Ablation(model, task, ablation, batch_size)
    common: dict[str, Any] = {"batch_size": batch_size, "progress": progress}
    # clean and ablated runs of every batch, prepared once: ACDC, node ablation and the
    # pruning search below all score masks against them
    evaluator = MaskEvaluator(model, graph, task, abl, batch_size)

    node_level: dict[str, float] | None = None
    kept: Tensor | None = None
    if method == "exact":
        ckpt = Path(checkpoint_dir) / "exact_checkpoint.pt" if checkpoint_dir else None
        scores = exact_scores(model, graph, task, abl, checkpoint=ckpt, **common)
    elif method in ("eap", "eap-ig-inputs", "eap-ig-activations"):
        scores = eap_scores(model, graph, task, abl, mode=method, steps=steps, **common)  # type: ignore[arg-type]
    elif method == "acdc":
        metric = acdc_metric if acdc_metric != "task" else None
        ckpt = Path(checkpoint_dir) / "acdc_checkpoint.pt" if checkpoint_dir else None
        scores, kept = acdc(
            model,
            graph,
            task,
            abl,
            tau=tau,
            metric=metric,
            checkpoint=ckpt,
            evaluator=evaluator,
            **common,
        )
    else:
        node_level = node_scores(model, graph, task, abl, evaluator=evaluator, **common)
        scores = _node_edge_scores(graph, node_level)
    scoring_time = time.perf_counter() - t0

    m_full = evaluator(graph.valid.float())
    m_empty = evaluator(torch.zeros(graph.n_senders, graph.n_receivers))

    def select(n: int) -> Tensor:
        if node_level is not None:
            return prune.remove_dangling(graph, _node_selection(graph, node_level, n))
        chosen_edges = (
            prune.greedy(graph, scores, n) if greedy_growth else prune.top_n(graph, scores, n)
        )
        return prune.remove_dangling(graph, chosen_edges)

    pruning: dict[str, Any]
    if kept is not None:
        keep = prune.remove_dangling(graph, kept)
        pruning = {"rule": "acdc", "tau": tau, "metric": acdc_metric}
    elif top_n is not None:
        keep = select(top_n)
        pruning = {"rule": "greedy" if greedy_growth else "top-n", "n": top_n}
    elif threshold is not None:
        if node_level is not None:
            n_nodes = sum(abs(v) >= threshold for v in node_level.values())
            keep = select(n_nodes)
        else:
            keep = prune.remove_dangling(graph, prune.threshold(graph, scores, threshold))
        pruning = {"rule": "threshold", "threshold": threshold}
    else:
        assert target_faithfulness is not None
        size = len(node_level) if node_level is not None else graph.n_edges
        keep, n_used = _search(
            lambda n: select(n), evaluator, m_full, m_empty, target_faithfulness, size
        )
        pruning = {"rule": "target-faithfulness", "target": target_faithfulness, "n": n_used}
    m_circuit = evaluator(keep.float())
    meta = {
        "model": model.cfg.name or model.cfg.family,
        "family": model.cfg.family,
        "task": getattr(task, "name", "custom"),
        "method": method,
        "ablation": ablation,
        "metric_name": getattr(getattr(task, "metric", None), "name", "metric"),
        "n_prompts": len(task),
        "steps": steps if method.startswith("eap-ig") else None,
        "pruning": pruning,
        "metrics": {"full": m_full, "circuit": m_circuit, "empty": m_empty},
        # orientation * score > 0 for an edge that helps (its ablation moves the metric from the
        # full model's value toward the empty circuit's); ACDC's KL changes and node-derived
        # magnitudes are already so oriented.
        "score_orientation": 1.0
        if method == "node" or (method == "acdc" and acdc_metric == "kl")
        else (1.0 if m_empty >= m_full else -1.0),
        "faithfulness": faithfulness(m_circuit, m_full, m_empty),
        "n_edges": int(keep.sum()),
        "n_edges_total": graph.n_edges,
        "time_s": time.perf_counter() - t0,
        "scoring_time_s": scoring_time,
        "seed": seed,
        "task_seed": getattr(task, "meta", {}).get("seed"),
        "versions": _versions(),
    }
    return Circuit(graph, scores, keep, meta, node_level)


def _search(
    select: Any,
    evaluator: MaskEvaluator,
    m_full: float,
    m_empty: float,
    target: float,
    size: int,
) -> tuple[Tensor, int]:
    """The smallest n (on a doubling grid, then bisected) whose circuit reaches ``target``."""
    cache: dict[int, float] = {}

    def f(n: int) -> float:
        if n not in cache:
            cache[n] = faithfulness(evaluator(select(n).float()), m_full, m_empty)
        return cache[n]

    lo, hi = 0, 1
    while hi < size and not f(hi) >= target:
        lo, hi = hi, min(size, hi * 2)
    if hi >= size and not f(size) >= target:
        logger.warning("no circuit reaches faithfulness %.2f; keeping every edge", target)
        return select(size), size
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if f(mid) >= target:
            hi = mid
        else:
            lo = mid
    return select(hi), hi
