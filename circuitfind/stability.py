"""How stable is a circuit: bootstrap inclusion frequencies, a core / contingent split, and
confidence intervals on faithfulness, CPR and CMD; agreement across methods.

:func:`bootstrap` resamples the task's prompts with replacement (seeded), re-scores, re-prunes
with the circuit's own rule (the same top-n, threshold or faithfulness target; ACDC re-runs) and
re-measures each resample's circuit on that resample. An edge's *inclusion frequency* is the
share of resamples whose circuit keeps it; edges kept in at least :data:`CORE` of them are the
*core*, the others ever kept are *contingent*. The intervals are percentile intervals of the
resamples' values (the whole pipeline's noise: which circuit is chosen and how faithful it is;
a resample on which the metric cannot move has none, and ``n`` counts those measured), beside
the point value of the circuit itself. Each resample picks and measures its circuit on its own
prompts (with repeats), so the resamples can be optimistic and the interval need not contain the
point value (``mean - value`` is the bias estimate: on zoo:ioi, EAP-IG's CPR is 0.595 and its
resamples' interval [0.598, 0.749]). ``faithfulness_oob`` is the honest counterpart: each
resample's circuit measured on the prompts it left out (about 37% of them; free, as every
circuit's per-prompt metrics are already there); with ``N`` resamples they are coarse (N = 20 gives
a rough 95% interval), and the evaluation's own per-prompt bootstrap of the chosen circuit stays
in ``meta["evaluation"]``.

Nothing is run twice that need not be: every resample reads the same prepared runs
(:class:`circuitfind.resample.PromptRuns`); for methods whose score is a mean of per-prompt
scores (exact, EAP, EAP-IG, node ablation) the per-prompt scores are computed once and a
resample's scores are their mean over its prompts (equal to re-scoring it, tested); circuits the
resamples share are patched once (the prepared runs remember each circuit's per-prompt metrics).

When it is on by default (:func:`default_bootstrap`, the CLI's ``--bootstrap auto``): the
per-prompt scores cost about one more scoring run and every resample re-prunes, so it is on
(N = 20) for attribution methods (one pass for all edges) on graphs up to
:data:`ATTRIBUTION_MAX_EDGES` edges, and for per-edge / per-node patching on graphs up to
:data:`PATCHING_MAX_EDGES`; off for ACDC and methods registered without per-prompt scores (each
resample would be a full new run) and for bigger graphs. ``--bootstrap 0`` turns it off. The
Python ``discover`` defaults to 0 (library calls inside loops and benchmarks should not
multiply their cost unasked); ``bootstrap="auto"`` applies the rule. Memory: the per-prompt
scores are [prompts, senders, receivers] float32 (28 MB for GPT-2 small at 100 prompts).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import Tensor
from tqdm.auto import tqdm

from circuitfind.circuit import Circuit
from circuitfind.errors import InputError
from circuitfind.evaluation import _effect_check, baseline, evaluate, faithfulness
from circuitfind.graph import Graph
from circuitfind.methods.table import method_options, method_spec
from circuitfind.positions import attach_layout, position_edge_name, split_position_edge
from circuitfind.pruning import greedy as greedy_top
from circuitfind.pruning import node_selection, remove_dangling
from circuitfind.pruning import top_n as top_n_mask
from circuitfind.pruning_positions import remove_dangling as positional_dangling
from circuitfind.pruning_positions import top_n as positional_top
from circuitfind.resample import PromptRuns, per_prompt_scores, prompt_additive, scoring_function
from circuitfind.runs import PreparedRuns
from circuitfind.search import prune

__all__ = [
    "ATTRIBUTION_MAX_EDGES",
    "CORE",
    "DEFAULT_N",
    "PATCHING_MAX_EDGES",
    "Interval",
    "Stability",
    "agreement",
    "bootstrap",
    "default_bootstrap",
    "frequency_matrix",
    "resolve_bootstrap",
    "search_near",
]

logger = logging.getLogger(__name__)

CORE = 0.9  # an edge kept in at least this share of resamples is core
DEFAULT_N = 20
ATTRIBUTION_MAX_EDGES = 10_000
PATCHING_MAX_EDGES = 1_000
_CARRIED = (
    "level",
    "prunes_itself",
    "method",
    "options",
    "score_kind",
    "score_orientation",
    "ablation",
    "positions",
)


def default_bootstrap(method: str, n_edges: int) -> int:
    """The number of resamples ``--bootstrap auto`` runs (module docstring has the rule)."""
    spec = method_spec(method)
    if spec.prunes or not prompt_additive(spec):
        return 0
    limit = ATTRIBUTION_MAX_EDGES if spec.unit == "run" else PATCHING_MAX_EDGES
    return DEFAULT_N if n_edges <= limit else 0


def resolve_bootstrap(value: int | str | None, method: str, n_edges: int) -> int:
    """A resample count from ``N``, ``"auto"`` (:func:`default_bootstrap`) or None (0)."""
    if value is None:
        return 0
    if isinstance(value, str):
        if value.strip().lower() == "auto":
            return default_bootstrap(method, n_edges)
        try:
            value = int(value)
        except ValueError:
            raise InputError(
                f"bootstrap must be a number of resamples or 'auto'; got {value!r}"
            ) from None
    if isinstance(value, bool) or not isinstance(value, int) or value < 0 or value == 1:
        raise InputError(
            f"bootstrap must be 0 (off), 'auto' or at least 2 resamples; got {value!r}"
        )
    return value


@dataclass(frozen=True)
class Interval:
    """A point value and the percentile interval of its bootstrap replicates."""

    value: float | None  # the circuit's own value
    low: float | None  # 2.5th percentile of the replicates
    high: float | None  # 97.5th
    stderr: float | None  # their standard deviation
    n: int  # replicates with a finite value
    mean: float | None = None  # their mean (minus ``value``: the bootstrap's bias estimate)

    @classmethod
    def of(cls, point: float | None, replicates: Sequence[float | None]) -> Interval:
        xs = np.array([x for x in replicates if x is not None], dtype=float)
        xs = xs[np.isfinite(xs)]
        if xs.size < 2:
            mean = float(xs.mean()) if xs.size else None
            return cls(point, None, None, None, int(xs.size), mean)
        lo, hi = np.percentile(xs, [2.5, 97.5])
        return cls(
            point, float(lo), float(hi), float(xs.std(ddof=1)), int(xs.size), float(xs.mean())
        )

    def contains(self, x: float, tol: float = 1e-9) -> bool:
        """Whether ``x`` lies in [low, high] (within ``tol``)."""
        return (
            self.low is not None
            and self.high is not None
            and self.low - tol <= x <= self.high + tol
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "value": self.value,
            "low": self.low,
            "high": self.high,
            "stderr": self.stderr,
            "n": self.n,
            "mean": self.mean,
        }


@dataclass
class Stability:
    """What :func:`bootstrap` found (module docstring).

    Attributes:
        frequency: [S, R] share of resamples whose circuit keeps each edge.
        intervals: faithfulness, cpr, cmd and n_edges, each an :class:`Interval`.
        how: ``per-prompt scores reindexed`` or ``re-scored`` (each resample a new run).
    """

    graph: Graph
    frequency: Tensor
    intervals: dict[str, Interval]
    n_boot: int
    seed: int
    n_prompts: int
    how: str
    rule: dict[str, Any]
    time_s: float = 0.0
    sizes: list[int] = field(default_factory=list)
    replicates: dict[str, list[float | None]] = field(default_factory=dict)
    positions: tuple[str, ...] | None = None  # position-aware: frequency is [S, R, P]

    def _named(self, where: Tensor) -> list[tuple[str, float]]:
        """(name, frequency) of the valid edges (or (edge, column) terms) where ``where``,
        most frequent first (ties in index order)."""
        valid = self.graph.valid
        if self.positions is not None:
            valid = valid[..., None].expand_as(self.frequency)
        named = []
        for ix in (valid & where).nonzero().tolist():
            name = self.graph.edge_name(ix[0], ix[1])
            if self.positions is not None:
                name = position_edge_name(name, self.positions[ix[2]])
            named.append((name, float(self.frequency[tuple(ix)])))
        return sorted(named, key=lambda kv: -kv[1])

    def edges_with(self, low: float, high: float = 1.0) -> list[str]:
        """Edge names (``edge@column`` with positions) with frequency in [low, high], most
        frequent first."""
        where = (self.frequency >= low - 1e-12) & (self.frequency <= high)
        return [name for name, _ in self._named(where)]

    @property
    def core(self) -> list[str]:
        return self.edges_with(CORE)

    @property
    def contingent(self) -> list[str]:
        where = (self.frequency > 0) & (self.frequency < CORE - 1e-12)
        return [name for name, _ in self._named(where)]

    def to_meta(self, circuit: Circuit | None = None) -> dict[str, Any]:
        """Plain JSON for ``circuit.meta["stability"]`` (frequencies of edges ever kept)."""
        freq = {name: round(f, 6) for name, f in self._named(self.frequency > 0)}
        core = set(self.core)
        out: dict[str, Any] = {
            "n_boot": self.n_boot,
            "seed": self.seed,
            "n_prompts": self.n_prompts,
            "how": self.how,
            "rule": self.rule,
            "core_threshold": CORE,
            "frequency": freq,
            "core": self.core,
            "contingent": self.contingent,
            "intervals": {k: v.to_dict() for k, v in self.intervals.items()},
            "replicates": self.replicates,
            "time_s": round(self.time_s, 4),
        }
        if circuit is not None and circuit.n_edges:
            kept = circuit.edge_names
            out["circuit_core_share"] = sum(e in core for e in kept) / len(kept)
        return out


def frequency_matrix(circuit: Circuit) -> Tensor | None:
    """Inclusion frequencies from ``circuit.meta["stability"]`` (0 for edges never kept), or
    None when the circuit has none: [S, R], or [S, R, P] for a position-aware circuit. A
    position-free view of position-aware frequencies (``Circuit.collapsed``) gets, per edge,
    its most often kept column's frequency (a lower bound on how often any column was)."""
    freq = (circuit.meta.get("stability") or {}).get("frequency")
    if not isinstance(freq, dict):
        return None
    g = circuit.graph
    cols = circuit.positions
    shape = (g.n_senders, g.n_receivers) + (() if cols is None else (len(cols),))
    out = torch.zeros(shape)
    column_of = {c: k for k, c in enumerate(cols or ())}
    for name, value in freq.items():
        edge_name, col = split_position_edge(name)
        e = g.edge(edge_name)
        if cols is None:
            ix: tuple[int, ...] = (e.sender_index, e.receiver_index)
            out[ix] = max(float(out[ix]), float(value))
        elif col in column_of:
            out[e.sender_index, e.receiver_index, column_of[col]] = float(value)
        else:
            raise InputError(
                f"stability frequency of {name!r}: its column is not one of the circuit's "
                f"positions {list(cols)}"
            )
    return out


def _selector(rep: Circuit, greedy: bool) -> Callable[[int], Tensor]:
    """n -> the circuit of the n best edges (nodes, for node-level scores), as ``prune``
    selects them (greedy growth for greedy searches), dangling edges dropped."""
    graph = rep.graph
    nodes = rep.node_scores if rep.meta.get("level") == "node" else None

    def select(n: int) -> Tensor:
        if nodes is not None:
            return remove_dangling(graph, node_selection(graph, nodes, n))
        if rep.positions is not None:
            return positional_dangling(graph, positional_top(graph, rep.score_matrix, n))
        pick = greedy_top if greedy else top_n_mask
        return remove_dangling(graph, pick(graph, rep.score_matrix, n))

    return select


def search_near(
    select: Callable[[int], Tensor], runs: PreparedRuns, target: float, size: int, start: int
) -> tuple[Tensor, dict[str, Any]]:
    """The smallest n in 1..size whose circuit reaches ``target``, searched outward from
    ``start`` (the original circuit's size) by doubling steps, then bisected: the rule of
    :func:`circuitfind.search.search_target` (which also assumes faithfulness grows with n),
    in a few masked runs when the resample's answer is near the original's."""
    full, empty = baseline(runs)
    m_full, m_empty = float(full.mean()), float(empty.mean())
    info: dict[str, Any] = {"rule": "target-faithfulness", "target": target}
    if not _effect_check(full, empty)[2]:
        return select(size), {**info, "n": size, "met": False}
    seen: dict[int, bool] = {0: False}

    def ok(n: int) -> bool:
        if n not in seen:
            m = float(runs.metric_of(select(n).float()).mean())
            seen[n] = faithfulness(m, m_full, m_empty) >= target
        return seen[n]

    n = min(max(start, 1), size)
    step = 1
    if ok(n):
        hi, lo = n, max(n - 1, 0)
        while ok(lo):
            hi, step = lo, step * 2
            lo = max(hi - step, 0)
    else:
        lo, hi = n, min(n + 1, size)
        while not ok(hi):
            if hi == size:
                return select(size), {**info, "n": size, "met": False}
            lo, step = hi, step * 2
            hi = min(lo + step, size)
    while hi - lo > 1:
        mid = (lo + hi) // 2
        lo, hi = (lo, mid) if ok(mid) else (mid, hi)
    return select(hi), {**info, "n": hi, "met": True, "sizes_measured": len(seen) - 1}


def _prune_like(rep: Circuit, rule: dict[str, Any], runs: PreparedRuns) -> Circuit:
    """``rep`` pruned by the rule recorded in a circuit's ``meta["pruning"]``."""
    name = rule.get("rule")
    if name in ("top-n", "greedy"):
        return prune(rep, top_n=int(rule["n"]), greedy=name == "greedy", runs=runs)
    if name == "threshold":
        return prune(rep, threshold=float(rule["threshold"]), runs=runs)
    if name == "target-faithfulness":
        if not rule.get("met") or "n" not in rule:  # the original search kept every edge
            return prune(rep, target_faithfulness=float(rule["target"]), runs=runs)
        level_node = rep.meta.get("level") == "node"
        size = len(rep.node_scores or {}) if level_node else rep.n_edges_total
        keep, info = search_near(
            _selector(rep, greedy=False), runs, float(rule["target"]), size, int(rule["n"])
        )
        return rep.with_edges(keep, pruning=info)
    return prune(rep, runs=runs)  # a method that prunes itself keeps its own choice


def _out_of_bag(
    runs: PreparedRuns, circuit: Circuit, drawn: Tensor, full: Tensor, empty: Tensor
) -> float | None:
    """The faithfulness of a resample's circuit on the prompts the resample left out (free:
    the prepared runs hold every prompt's metric of each measured circuit); None when fewer
    than two were left out."""
    out = torch.ones(runs.n_prompts, dtype=torch.bool)
    out[drawn] = False
    if int(out.sum()) < 2:
        return None
    per = runs.metric_of(circuit.in_graph.float())
    pick = out.to(per.device)
    m = faithfulness(float(per[pick].mean()), float(full[pick].mean()), float(empty[pick].mean()))
    return m if np.isfinite(m) else None


def _point(circuit: Circuit, key: str) -> float | None:
    ev = circuit.meta.get("evaluation") or {}
    value = ev.get(key)
    return None if value is None else float(value)


def bootstrap(
    circuit: Circuit,
    n_boot: int = DEFAULT_N,
    *,
    seed: int = 0,
    runs: PreparedRuns | None = None,
    curve: bool | None = None,
    progress: bool = False,
) -> Stability:
    """Resample the prompts ``n_boot`` times, re-score, re-prune and re-measure (module
    docstring). ``circuit`` is one :func:`circuitfind.discover` made (its prepared runs, method,
    options and pruning rule are read from it). ``curve``: also the CPR / CMD of every resample
    (default: when the circuit has them)."""
    t0 = time.perf_counter()
    runs = runs if runs is not None else circuit.runs
    if runs is None:
        raise InputError(
            "bootstrap needs the prepared runs: pass a circuit made by circuitfind.discover "
            "(or runs=)"
        )
    if isinstance(n_boot, bool) or not isinstance(n_boot, int) or n_boot < 2:
        raise InputError(f"bootstrap needs at least 2 resamples; got {n_boot!r}")
    spec = method_spec(circuit.meta.get("method", "eap-ig-inputs"))
    opts = method_options(spec, circuit.meta.get("options") or {})
    rule = dict(circuit.meta.get("pruning") or {"rule": "target-faithfulness", "target": 0.9})
    if curve is None:
        curve = _point(circuit, "cpr") is not None
    if circuit.positions is not None:  # the runs score (edge, column) terms
        attach_layout(runs, circuit.positions, circuit.meta)
    graph, n = runs.graph, runs.n_prompts
    idx = torch.from_numpy(np.random.default_rng(seed).integers(0, n, size=(n_boot, n)))
    additive = prompt_additive(spec)
    per_prompt = per_prompt_scores(runs, spec, opts) if additive else None
    carried = {k: circuit.meta[k] for k in _CARRIED if k in circuit.meta}
    kept: list[Tensor] = []
    values: dict[str, list[float | None]] = {
        k: [] for k in ("faithfulness", "faithfulness_oob", "cpr", "cmd", "n_edges")
    }
    full, empty = baseline(runs)
    for r in tqdm(range(n_boot), desc="bootstrap", disable=not progress, unit="resample"):
        view = PromptRuns(runs, idx[r])
        if per_prompt is not None:
            edges, nodes = per_prompt.mean(idx[r])
            chosen = torch.zeros(edges.shape, dtype=torch.bool)
        else:
            result = scoring_function(spec, view)(view, **opts)
            edges, nodes = result.edges, result.nodes
            chosen = result.kept if result.kept is not None else torch.zeros_like(graph.valid)
            if circuit.positions is not None and chosen.dim() == 2:
                chosen = chosen[..., None].expand(edges.shape)
        rep = Circuit(
            graph, edges, chosen, dict(carried), nodes, runs=view, positions=circuit.positions
        )
        pruned = _prune_like(rep, rule, view)
        kept.append(pruned.in_graph)
        values["n_edges"].append(float(pruned.n_edges))
        values["faithfulness_oob"].append(_out_of_bag(runs, pruned, idx[r], full, empty))
        try:
            ev = evaluate(
                runs.model,
                view.task,
                pruned,
                ablation=runs.kind,
                runs=view,
                curve=curve,
                seed=seed + r,
            )
        except InputError as exc:  # a resample on which the metric cannot move: no value
            logger.warning("bootstrap resample %d not measured: %s", r, exc)
            for key in ("faithfulness", "cpr", "cmd"):
                values[key].append(None)
            continue
        values["faithfulness"].append(ev.faithfulness)
        values["cpr"].append(ev.cpr)
        values["cmd"].append(ev.cmd)
    frequency = torch.stack(kept).float().mean(0)
    faith = circuit.meta.get("faithfulness", _point(circuit, "faithfulness"))
    points = {
        "faithfulness": faith,
        "faithfulness_oob": faith,
        "cpr": _point(circuit, "cpr"),
        "cmd": _point(circuit, "cmd"),
        "n_edges": float(circuit.n_edges),
    }
    intervals = {
        k: Interval.of(points[k], v) for k, v in values.items() if curve or k not in ("cpr", "cmd")
    }
    return Stability(
        graph=graph,
        frequency=frequency,
        intervals=intervals,
        n_boot=n_boot,
        seed=seed,
        n_prompts=n,
        how="per-prompt scores reindexed" if additive else "re-scored",
        rule=rule,
        time_s=time.perf_counter() - t0,
        sizes=[int(x or 0) for x in values["n_edges"]],
        replicates=values,
        positions=circuit.positions,
    )


def agreement(circuits: dict[str, Circuit]) -> dict[str, Any]:
    """Per-edge agreement across methods' circuits (same graph): the share of methods keeping
    each edge ever kept, the edges all keep, each method's size and faithfulness, and the
    Jaccard index of every pair."""
    if not circuits:
        raise InputError("agreement needs at least one circuit")
    names = list(circuits)
    first = next(iter(circuits.values()))
    if any(c.positions != first.positions for c in circuits.values()):
        raise InputError(
            "agreement compares circuits over the same edges: all position-free, or all with "
            "the same position columns"
        )
    masks = torch.stack([circuits[m].in_graph for m in names]).float()
    share = masks.mean(0)
    freq = {
        first.name_at(ix): round(float(share[tuple(ix)]), 6)
        for ix in ((share > 0) & first.valid).nonzero().tolist()
    }
    jaccard = {}
    for a in range(len(names)):
        for b in range(a + 1, len(names)):
            inter = float((masks[a] * masks[b]).sum())
            union = float(((masks[a] + masks[b]) > 0).sum())
            jaccard[f"{names[a]}|{names[b]}"] = inter / union if union else 1.0
    per_method = {
        m: {
            "n_edges": c.n_edges,
            "faithfulness": c.meta.get("faithfulness"),
            "faithfulness_stderr": c.meta.get("faithfulness_stderr"),
            "time_s": c.meta.get("time_s"),
        }
        for m, c in circuits.items()
    }
    return {
        "methods": names,
        "frequency": freq,
        "all_agree": sorted(k for k, v in freq.items() if v >= 1.0 - 1e-9),
        "per_method": per_method,
        "jaccard": jaccard,
    }
