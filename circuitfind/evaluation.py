"""How good is a circuit: faithfulness with its noise, faithfulness curves (MIB's CPR/CMD),
ROC AUC against a reference.

Faithfulness is a ratio, f = (m(C) - m(∅)) / (m(N) - m(∅)), of mean metrics over the prompts
with everything outside C ablated. Its denominator, the *effect* m(N) - m(∅), can be noise: a
task the model barely does gives ratios of 5.8 or -1.8 that mean nothing. So every
faithfulness comes with the effect, the effect's standard error over prompts, and a bootstrap
standard error and 95% interval of f itself (prompts resampled with replacement, the ratio
recomputed); when the effect is not clearly above its error (|effect| < 3 SE) or is tiny
against the metric's scale (|effect| < 1% of the mean |metric|), the result is flagged
``reliable=False`` with a one-line ``warning``, and a pruning search never counts such a target
as met. An effect that is zero to float precision (clean and corrupted prompts give the same
metric, or answer == wrong) is refused before any work: the metric cannot move.
"""

from __future__ import annotations

import logging
import math
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import torch
from scipy.stats import mannwhitneyu
from torch import Tensor

from circuitfind.checks import check_effect
from circuitfind.circuit import Circuit
from circuitfind.errors import InputError
from circuitfind.graph import Graph
from circuitfind.model import Model
from circuitfind.pruning_positions import remove_dangling, signed_top, top_n
from circuitfind.runs import PreparedRuns
from circuitfind.scores import helpfulness, node_totals, orientation
from circuitfind.tasks import Task

__all__ = [
    "CURVE_PERCENTS",
    "Evaluation",
    "Faithfulness",
    "baseline",
    "evaluate",
    "faithfulness",
    "measure",
    "roc_auc",
]

logger = logging.getLogger(__name__)

CURVE_PERCENTS: tuple[float, ...] = (0.1, 0.2, 0.5, 1, 2, 5, 10, 20, 50, 100)
N_BOOTSTRAP = 1000
RELIABLE_SIGMAS = 3.0  # the effect must exceed this many standard errors
RELATIVE_FLOOR = 0.01  # ... and this fraction of the metric's mean magnitude


def faithfulness(m_circuit: float, m_full: float, m_empty: float) -> float:
    """f = (m(C) - m(empty)) / (m(N) - m(empty)); NaN when the model has no effect to explain."""
    denom = m_full - m_empty
    return float("nan") if abs(denom) < 1e-12 else (m_circuit - m_empty) / denom


@dataclass(frozen=True)
class Faithfulness:
    """A faithfulness with its noise (module docstring)."""

    value: float
    stderr: float  # bootstrap standard error of f over prompts
    ci_low: float  # 95% bootstrap percentile interval
    ci_high: float
    effect: float  # m(N) - m(∅)
    effect_stderr: float  # its standard error over prompts
    reliable: bool
    warning: str | None = None

    def __str__(self) -> str:
        text = f"{self.value:.3f} ± {self.stderr:.3f}"
        return text if self.reliable else f"{text} (unreliable: {self.warning})"


def _effect_check(full: Tensor, empty: Tensor) -> tuple[float, float, bool, str | None]:
    """(effect, its standard error, reliable, warning) from per-prompt metrics."""
    d = (full - empty).double()
    n = d.numel()
    effect = float(d.mean())
    se = float(d.std(unbiased=True) / math.sqrt(n)) if n > 1 else float("inf")
    scale = float(torch.maximum(full.abs(), empty.abs()).double().mean())
    if abs(effect) < RELIABLE_SIGMAS * se:
        return (
            effect,
            se,
            False,
            (
                f"the effect m(N) - m(∅) = {effect:.4g} is within {RELIABLE_SIGMAS:g} standard "
                f"errors ({se:.2g}) of zero over {n} prompts: the ratio is noise; use more prompts "
                "or a task the model does"
            ),
        )
    if abs(effect) < RELATIVE_FLOOR * scale:
        return (
            effect,
            se,
            False,
            (
                f"the effect m(N) - m(∅) = {effect:.4g} is under {RELATIVE_FLOOR:.0%} of the "
                f"metric's size ({scale:.3g}): the model barely does this task"
            ),
        )
    return effect, se, True, None


def measure(
    circuit: Tensor, full: Tensor, empty: Tensor, *, n_boot: int = N_BOOTSTRAP, seed: int = 0
) -> Faithfulness:
    """The faithfulness of per-prompt metrics ``circuit`` [n] against ``full`` and ``empty``
    [n], with its effect, errors and reliability flag."""
    effect, effect_se, reliable, warning = _effect_check(full, empty)
    value = faithfulness(float(circuit.mean()), float(full.mean()), float(empty.mean()))
    boot = _bootstrap_ratio(circuit[None], full, empty, n_boot, seed)[:, 0]
    finite = boot[np.isfinite(boot)]
    if finite.size > 1:
        stderr = float(finite.std(ddof=1))
        lo, hi = (float(x) for x in np.percentile(finite, [2.5, 97.5]))
    else:
        stderr, lo, hi = float("nan"), float("nan"), float("nan")
    return Faithfulness(value, stderr, lo, hi, effect, effect_se, reliable, warning)


def _bootstrap_ratio(
    circuits: Tensor, full: Tensor, empty: Tensor, n_boot: int, seed: int
) -> np.ndarray:
    """Bootstrap replicates of f for several circuits at once: [n_boot, k] from per-prompt
    metrics ``circuits`` [k, n] (the same resampled prompts for every circuit)."""
    n = full.numel()
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, n, size=(n_boot, n))
    c = circuits.double().cpu().numpy()[:, idx].mean(-1)  # [k, n_boot]
    f = full.double().cpu().numpy()[idx].mean(-1)  # [n_boot]
    e = empty.double().cpu().numpy()[idx].mean(-1)
    with np.errstate(divide="ignore", invalid="ignore"):
        out = (c - e) / (f - e)
    return np.asarray(out.T)


def baseline(runs: PreparedRuns, metric: Any = None) -> tuple[Tensor, Tensor]:
    """Per-prompt metrics [n] of the full model and of the empty circuit (memoised)."""
    valid = runs.graph.valid.float()
    return runs.metric_of(valid, metric), runs.metric_of(torch.zeros_like(valid), metric)


@dataclass
class Evaluation:
    """Faithfulness of a circuit and, optionally, the curves over circuit sizes.

    ``faithfulness`` is the point value; ``faithfulness_stderr`` / ``faithfulness_ci`` its
    bootstrap error, ``effect`` / ``effect_stderr`` the denominator m(N) - m(∅) and its error,
    ``reliable`` and ``warning`` the flag of the module docstring. Curves are lists of
    (percent of edges, f) with one standard error a point in ``*_stderr``.
    """

    faithfulness: float
    metric_full: float
    metric_circuit: float
    metric_empty: float
    n_edges: int
    n_edges_total: int
    ablation: str
    metric_name: str = "metric"
    higher_is_better: bool = True
    n_prompts: int = 0
    faithfulness_stderr: float = float("nan")
    faithfulness_ci: tuple[float, float] = (float("nan"), float("nan"))
    effect: float = float("nan")
    effect_stderr: float = float("nan")
    reliable: bool = True
    warning: str | None = None
    curve: list[tuple[float, float]] = field(default_factory=list)  # ranked by helpfulness
    curve_stderr: list[float] = field(default_factory=list)
    curve_abs: list[tuple[float, float]] = field(default_factory=list)  # ranked by |score|
    curve_abs_stderr: list[float] = field(default_factory=list)
    cpr: float | None = None  # area under f, edges ranked by helpfulness
    cpr_stderr: float | None = None
    cmd: float | None = None  # area under |1 - f|, edges ranked by |score|
    cmd_stderr: float | None = None
    roc_auc_edges: float | None = None  # vs a reference circuit, edges ranked by |score|
    roc_auc_nodes: float | None = None  # nodes ranked by their largest |edge score|

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON values (NaN and infinities as ``None``)."""
        return _finite(asdict(self))

    def summary(self) -> str:
        """One line: faithfulness ± error, the effect, and the flag when there is one."""
        text = (
            f"faithfulness {self.faithfulness:.3f} ± {self.faithfulness_stderr:.3f} "
            f"(effect m(N) - m(∅) = {self.effect:.3g} ± {self.effect_stderr:.2g} "
            f"{self.metric_name}, {self.n_prompts} prompts)"
        )
        return text if self.reliable else f"{text}; UNRELIABLE: {self.warning}"


def _finite(x: Any) -> Any:
    if isinstance(x, float):
        return x if math.isfinite(x) else None
    if isinstance(x, dict):
        return {k: _finite(v) for k, v in x.items()}
    if isinstance(x, list | tuple):
        return [_finite(v) for v in x]
    return x


def _area(xs: np.ndarray, ys: np.ndarray) -> np.ndarray:
    """Trapezoid area over the last axis (x in fractions of edges)."""
    return np.asarray(np.trapezoid(ys, xs, axis=-1))


def curve_sizes(n_edges: int) -> list[int]:
    """The circuit sizes of the curve: int(pct x edges) for pct in CURVE_PERCENTS (MIB)."""
    return [int(n_edges * pct / 100) for pct in CURVE_PERCENTS]


def evaluate(
    model: Model,
    task: Task,
    circuit: Circuit,
    *,
    ablation: str | None = None,
    curve: bool = False,
    batch_size: int | None = None,
    metric: Any = None,
    reference: Circuit | set[str] | None = None,
    runs: PreparedRuns | None = None,
    seed: int = 0,
) -> Evaluation:
    """Faithfulness of ``circuit`` on ``task`` with everything outside it ablated.

    Args:
        ablation: resample / mean / mean-positional / zero; default: the circuit's own.
        curve: also compute the faithfulness curves over circuits holding CURVE_PERCENTS of
            the edges (ranked by helpfulness and by |score|; int(pct * edges) of them, then
            pruned to those on a path from input to logits, as MIB does) and MIB's CPR and CMD
            areas, each with a bootstrap error. A circuit without scores (a file with null
            scores) has no curve.
        reference: a known circuit (a ``Circuit`` or a set of edge names, any spelling): the
            ROC AUC of the circuit's scores for recovering its edges and its nodes.
        batch_size: prompts per pass (default: the prepared runs' own, else 32).
        runs: prepared runs to reuse (default: the circuit's own when they match).
        seed: the bootstrap's seed.
    """
    from circuitfind.scoring import prepare

    graph = Graph.from_model(model)
    if (graph.cfg.n_layers, graph.cfg.n_heads) != (
        circuit.graph.cfg.n_layers,
        circuit.graph.cfg.n_heads,
    ):
        raise InputError(
            f"the circuit is for a model with {circuit.graph.cfg.n_layers} layers x "
            f"{circuit.graph.cfg.n_heads} heads; this model has {graph.cfg.n_layers} x "
            f"{graph.cfg.n_heads}"
        )
    kind = ablation or circuit.meta.get("ablation", "resample")
    runs = prepare(model, task, kind, batch_size=batch_size, runs=runs or circuit.runs)
    if circuit.positions is not None:  # the positional mask needs the task's columns
        from circuitfind.positions import attach_layout

        attach_layout(runs, circuit.positions, circuit.meta)
    full, empty = baseline(runs, metric)
    check_effect(full, empty)
    per_c = runs.metric_of(circuit.in_graph.float(), metric)
    faith = measure(per_c, full, empty, seed=seed)
    m = runs.task.metric if metric is None else runs.task.with_metric(metric).metric
    result = Evaluation(
        faithfulness=faith.value,
        metric_full=float(full.mean()),
        metric_circuit=float(per_c.mean()),
        metric_empty=float(empty.mean()),
        n_edges=circuit.n_edges,
        n_edges_total=circuit.n_edges_total,
        ablation=runs.kind,
        metric_name=m.name,
        higher_is_better=m.higher_is_better,
        n_prompts=len(task),
        faithfulness_stderr=faith.stderr,
        faithfulness_ci=(faith.ci_low, faith.ci_high),
        effect=faith.effect,
        effect_stderr=faith.effect_stderr,
        reliable=faith.reliable,
        warning=faith.warning,
    )
    if faith.warning:
        logger.warning("faithfulness: %s", faith.warning)
    has_scores = circuit.has_scores
    if reference is not None and has_scores:
        ref = _reference_mask(graph, reference)
        scored = circuit.collapsed()  # a reference names edges, not positions
        result.roc_auc_edges = roc_auc(scored.score_matrix, ref, graph.valid)
        totals = _node_ranking(graph, scored)
        ref_nodes = _nodes_of(graph, ref)
        names = [n.name for n in graph.senders if n.kind != "input"]
        result.roc_auc_nodes = roc_auc(
            torch.tensor([totals[n] for n in names]),
            torch.tensor([n in ref_nodes for n in names]),
        )
    if curve and not has_scores:
        logger.warning("the circuit has no edge scores: no faithfulness curve, CPR or CMD")
    elif curve:
        _curves(runs, circuit, full, empty, metric, result, seed)
    return result


def _curves(
    runs: PreparedRuns,
    circuit: Circuit,
    full: Tensor,
    empty: Tensor,
    metric: Any,
    result: Evaluation,
    seed: int,
) -> None:
    graph = runs.graph
    scores = circuit.score_matrix.nan_to_num(0.0)  # an edge never scored (ACDC) has no evidence
    sign = circuit_orientation(circuit, float(full.mean()), float(empty.mean()))
    signed = helpfulness(scores, sign)
    per_sig, per_abs = [], []
    for n in curve_sizes(circuit.n_edges_total):
        by_abs = remove_dangling(graph, top_n(graph, scores, n))
        by_sign = remove_dangling(graph, signed_top(graph, signed, n))
        per_abs.append(runs.metric_of(by_abs.float(), metric))
        per_sig.append(runs.metric_of(by_sign.float(), metric))
    xs = np.array(CURVE_PERCENTS) / 100
    for per, curve_attr, err_attr, area_attr, transform in (
        (per_sig, "curve", "curve_stderr", "cpr", None),
        (per_abs, "curve_abs", "curve_abs_stderr", "cmd", np.abs),
    ):
        stack = torch.stack(per)  # [points, n]
        point = np.array(
            [faithfulness(float(p.mean()), float(full.mean()), float(empty.mean())) for p in per]
        )
        boot = _bootstrap_ratio(stack, full, empty, N_BOOTSTRAP, seed)  # [B, points]
        ys, yb = (point, boot) if transform is None else (np.abs(1 - point), np.abs(1 - boot))
        setattr(result, curve_attr, [(float(p), float(f)) for p, f in zip(CURVE_PERCENTS, point)])
        setattr(result, err_attr, [float(x) for x in np.nanstd(boot, axis=0, ddof=1)])
        setattr(result, area_attr, float(_area(xs, ys)))
        setattr(result, area_attr + "_stderr", float(np.nanstd(_area(xs, yb), ddof=1)))


def circuit_orientation(circuit: Circuit, m_full: float, m_empty: float) -> float:
    """+1 / -1: the sign that makes the circuit's scores read as helpfulness (the circuit's
    recorded orientation when it has one, else :func:`circuitfind.scores.orientation` of its
    score kind)."""
    recorded = circuit.meta.get("score_orientation")
    if recorded is not None:
        return float(recorded)
    kind = circuit.meta.get("score_kind", "ablated-minus-clean")
    return orientation(kind, m_full, m_empty)


def _reference_mask(graph: Graph, reference: Circuit | set[str]) -> Tensor:
    if isinstance(reference, Circuit):
        if reference.in_graph.shape != graph.valid.shape:
            raise InputError("the reference circuit is for a model of another shape")
        return reference.in_graph & graph.valid
    mask = torch.zeros_like(graph.valid)
    for name in reference:
        e = graph.edge(name)
        mask[e.sender_index, e.receiver_index] = True
    return mask


def _nodes_of(graph: Graph, edges: Tensor) -> set[str]:
    s, r = edges.nonzero(as_tuple=True)
    return {graph.senders[int(i)].name for i in s} | {graph.receivers[int(j)].node for j in r}


def _node_ranking(graph: Graph, circuit: Circuit) -> dict[str, float]:
    """A node's rank score: |its own score| (node methods) or its largest |edge score|."""
    if circuit.node_scores:
        return {n.name: abs(circuit.node_scores.get(n.name, 0.0)) for n in graph.senders}
    return node_totals(graph, circuit.score_matrix, how="max-abs")


def roc_auc(scores: Tensor, reference: Tensor, valid: Tensor | None = None) -> float:
    """ROC AUC of |scores| for recovering the True entries of ``reference`` (same shape)."""
    mask = torch.ones_like(reference, dtype=torch.bool) if valid is None else valid
    s = scores[mask].abs().nan_to_num(0.0).double().numpy()
    y = reference[mask].bool().numpy()
    if y.all() or not y.any():
        return float("nan")
    u = mannwhitneyu(s[y], s[~y], alternative="two-sided").statistic
    return float(u / (y.sum() * (~y).sum()))
