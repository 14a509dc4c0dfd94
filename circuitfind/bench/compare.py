"""Method comparison on the zoo (IOI, induction, greater-than): faithfulness curves, MIB-style
CPR/CMD, and stability over resamples of the prompt set.

For every task and method, each of R prompt sets (seeds ``seed .. seed+R-1``) is scored with
resample ablation, and the faithfulness of the top-x% edges is measured at
``circuitfind.evaluation.CURVE_PERCENTS``:

- CMD: area under |1 - f| with edges ranked by |score| (lower is better);
- CPR: area under f with edges ranked by their *contribution* (higher is better): the score
  oriented by the engine's one rule, ``circuitfind.scores.orientation`` (an
  ``ablated-minus-clean`` score helps when it moves the metric toward the empty circuit's;
  ACDC's KL increase and the node method's magnitudes are already oriented);
- stability: per-edge inclusion frequency of the top ``TOP_PCT``% edges across the resamples
  (union, intersection, mean pairwise Jaccard), and the spread of f at fixed sizes.
"""

from __future__ import annotations

import itertools
import logging
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from circuitfind.bench.common import Report, md_table, stamp, timed

__all__ = ["TASKS", "contribution", "run"]

logger = logging.getLogger(__name__)

TASKS: tuple[tuple[str, str], ...] = (
    ("ioi", "zoo:ioi"),
    ("induction", "zoo:induction-2l"),
    ("greater-than", "zoo:greater-than"),
)
FULL_METHODS: tuple[str, ...] = (
    "exact",
    "acdc",
    "eap",
    "eap-ig-inputs",
    "eap-ig-activations",
    "node",
    "edge-pruning",
    "ugs",
)
QUICK_METHODS: tuple[str, ...] = ("exact", "eap", "eap-ig-inputs", "node", "edge-pruning", "ugs")
CERTIFIED = "certified"
"""Not a method but the certified pipeline (:func:`circuitfind.certify`): EAP-IG-inputs scores,
the edge-pruning mask warm-started from them and from a cold start, and exact patching when it
costs no more than the mask; its row ranks edges by whichever of those rankings had the largest
patched CPR on the prompt set (the same prompts choose and measure, as for every row)."""
FULL_METHODS += (CERTIFIED,)
QUICK_METHODS += (CERTIFIED,)
TOP_PCT = 10.0  # stability: the top 10% of edges by |score|
SPREAD_PCTS = (2.0, 5.0, 10.0, 20.0)


def contribution(circuit: Any) -> Tensor:
    """The circuit's scores oriented so that larger means "helps the task": the engine's one
    rule (:func:`circuitfind.scores.orientation`, recorded by discover as
    ``meta["score_orientation"]``)."""
    from circuitfind.scores import helpfulness

    return helpfulness(circuit.score_matrix, float(circuit.meta["score_orientation"]))


def _top_edges(graph: Any, scores: Tensor, pct: float) -> set[int]:
    k = max(1, round(graph.n_edges * pct / 100))
    s = scores.abs().nan_to_num(0.0)
    s = torch.where(graph.valid, s, torch.full_like(s, -1.0)).flatten()
    return set(s.topk(k).indices.tolist())


def _one(model: Any, task: Any, method: str) -> dict[str, Any]:
    """Score, then measure both curves of one method on one prompt set."""
    import circuitfind

    if method == CERTIFIED:
        circuit = circuitfind.certify(
            model, task, ablation="resample", top_n=1, frontier=0, progress=False, seed=0
        )
    else:
        circuit = circuitfind.discover(
            model, task, method=method, ablation="resample", top_n=1, progress=False, seed=0
        )
    # the curves rank by the engine's own orientation rule, over the same prepared runs
    ev = circuitfind.evaluate(model, task, circuit, curve=True, runs=circuit.runs)
    return {
        "scores": circuit.score_matrix,
        "curve": ev.curve,
        "curve_abs": ev.curve_abs,
        "cpr": ev.cpr,
        "cmd": ev.cmd,
        "metric_full": ev.metric_full,
        "metric_empty": ev.metric_empty,
        "scoring_time_s": circuit.meta.get("scoring_time_s"),
        "chosen": (circuit.meta.get("certify") or {}).get("chosen"),
    }


def _stability(graph: Any, runs: list[dict[str, Any]]) -> dict[str, Any]:
    tops = [_top_edges(graph, r["scores"], TOP_PCT) for r in runs]
    counts: dict[int, int] = {}
    for t in tops:
        for i in t:
            counts[i] = counts.get(i, 0) + 1
    jac = [len(a & b) / len(a | b) for a, b in itertools.combinations(tops, 2) if a | b]
    R = graph.n_receivers
    freq = {
        graph.edge_name(i // R, i % R): c / len(runs)
        for i, c in sorted(counts.items(), key=lambda kv: -kv[1])
    }
    spread = {}
    for pct in SPREAD_PCTS:
        vals = [f for r in runs for p, f in r["curve_abs"] if p == pct]
        if vals:
            spread[str(pct)] = {
                "mean": float(np.mean(vals)),
                "std": float(np.std(vals)),
                "min": float(np.min(vals)),
                "max": float(np.max(vals)),
            }
    return {
        "k": len(tops[0]) if tops else 0,
        "union": len(counts),
        "in_all": sum(c == len(runs) for c in counts.values()),
        "mean_jaccard": float(np.mean(jac)) if jac else float("nan"),
        "inclusion_frequency": freq,
        "faithfulness_spread": spread,
    }


def _certified_vs_best(per_method: dict[str, list[dict[str, Any]]]) -> dict[str, Any] | None:
    """The certified pipeline's CPR against the best single method's, per prompt set paired
    (same prompts): mean ± std of each and of their difference."""
    cert = per_method.get(CERTIFIED) or []
    singles = {m: r for m, r in per_method.items() if m != CERTIFIED and r}
    if not cert or not singles:
        return None
    best = max(singles, key=lambda m: float(np.mean([r["cpr"] for r in singles[m]])))
    pairs = list(zip([r["cpr"] for r in cert], [r["cpr"] for r in singles[best]]))
    diff = [a - b for a, b in pairs]
    return {
        "best_single": best,
        "certified_cpr": float(np.mean([a for a, _ in pairs])),
        "best_cpr": float(np.mean([b for _, b in pairs])),
        "difference_mean": float(np.mean(diff)),
        "difference_std": float(np.std(diff)),
        "n_prompt_sets": len(pairs),
        "at_least_best": bool(np.mean(diff) >= 0),
        "chosen": [r.get("chosen") for r in cert],
    }


def _certified_lines(c: dict[str, Any] | None) -> list[str]:
    if c is None:
        return []
    verdict = "at least" if c["at_least_best"] else "below"
    return [
        f"Certified pipeline: CPR {c['certified_cpr']:.3f} against the best single method "
        f"({c['best_single']}) {c['best_cpr']:.3f}, difference {c['difference_mean']:+.3f} ± "
        f"{c['difference_std']:.3f} (std over {c['n_prompt_sets']} paired prompt sets): "
        f"{verdict} the best single method. Ranking the selection kept, per prompt set: "
        f"{'; '.join(str(x) for x in c.get('chosen') or [])}.",
        "",
    ]


def _plot(path: Path, title: str, per_method: dict[str, list[dict[str, Any]]]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2), sharey=True)
    for ax, key, label in (
        (axes[0], "curve_abs", "edges ranked by |score| (CMD: area under |1 - f|)"),
        (axes[1], "curve", "edges ranked by contribution (CPR: area under f)"),
    ):
        for method, runs in per_method.items():
            if not runs:
                continue
            xs = [p for p, _ in runs[0][key]]
            ys = np.array([[f for _, f in r[key]] for r in runs])
            (line,) = ax.plot(xs, ys.mean(0), marker="o", ms=3, label=method)
            if len(runs) > 1:
                ax.fill_between(xs, ys.min(0), ys.max(0), color=line.get_color(), alpha=0.15)
        ax.set_xscale("log")
        ax.axhline(1.0, color="grey", lw=0.6, ls="--")
        ax.axhline(0.0, color="grey", lw=0.6)
        ax.set_xlabel("% of edges kept")
        ax.set_title(label, fontsize=9)
    axes[0].set_ylabel("faithfulness f")
    axes[1].legend(fontsize=8)
    fig.suptitle(title, fontsize=11)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _mean_std(values: list[float]) -> str:
    vals = [v for v in values if v is not None and np.isfinite(v)]
    if not vals:
        return "n/a"
    if len(vals) == 1:
        return f"{vals[0]:.3f}"
    return f"{np.mean(vals):.3f} ± {np.std(vals):.3f}"


def run(
    out_dir: Path,
    *,
    quick: bool,
    seed: int,
    tasks: list[str] | tuple[str, ...] | str | None = None,
    methods: list[str] | tuple[str, ...] | str | None = None,
) -> dict[str, Any]:
    """Write ``method_comparison.md``/``.json`` and one PNG a task under ``out_dir``.

    ``tasks`` / ``methods`` (``--set tasks=ioi --set methods=eap,ugs``) restrict the run to
    some of :data:`TASKS` and of the methods (default: all tasks; the quick or full methods).
    """
    import circuitfind
    from circuitfind.errors import InputError
    from circuitfind.graph import Graph
    from circuitfind.methods.table import method_name

    chosen = QUICK_METHODS if quick else FULL_METHODS
    methods = (
        tuple(
            m if m == CERTIFIED else method_name(m)
            for m in (methods.split(",") if isinstance(methods, str) else methods or ())
        )
        or chosen
    )
    task_names = tuple(tasks.split(",") if isinstance(tasks, str) else tasks or ())
    unknown = sorted(set(task_names) - {name for name, _ in TASKS})
    if unknown:
        raise InputError(
            f"compare: unknown task(s) {', '.join(unknown)}; choose from "
            f"{', '.join(name for name, _ in TASKS)}"
        )
    selected = tuple((n, s) for n, s in TASKS if not task_names or n in task_names)
    n_prompts = 16 if quick else 32
    n_resamples = 3 if quick else 5
    report = Report("method_comparison", "Method comparison on the zoo models", stamp(seed, quick))
    report.add(
        f"Resample ablation, each task's own metric, {n_prompts} prompts a prompt set, "
        f"{n_resamples} prompt sets (seeds {seed}..{seed + n_resamples - 1}) per task and "
        "method. Faithfulness f = (m(C) - m(empty)) / (m(full) - m(empty)) of the top-x% "
        "edges. CMD: area under |1 - f| by |score| (lower is better); CPR: area under f with "
        "edges ranked by contribution (-score for exact/EAP/EAP-IG on higher-is-better metrics, "
        "ACDC's KL increase, the node method's |score|, the learned masks' keep probability; "
        "higher is better); both as mean ± std "
        "over the prompt sets. Stability: the top "
        f"{TOP_PCT:g}% edges by |score| of each prompt set; union / in all = edges chosen by at "
        "least one / by every prompt set; Jaccard: mean over pairs of prompt sets.",
        "",
    )
    if quick:
        skipped = [m for m in FULL_METHODS if m not in methods]
        report.add(
            f"**--quick**: {n_prompts} prompts (full: 32), {n_resamples} prompt sets (full: 5); "
            f"methods skipped: {', '.join(skipped)}.",
            "",
        )
    data: dict[str, Any] = {}
    summary: dict[str, Any] = {}
    for task_name, source in selected:
        model = circuitfind.load(source)
        graph = Graph.from_model(model)
        per_method: dict[str, list[dict[str, Any]]] = {}
        failures: list[dict[str, Any]] = []
        prompt_sets = [
            circuitfind.get_task(task_name, model, n=n_prompts, seed=seed + i)
            for i in range(n_resamples)
        ]
        for method in methods:
            runs = []
            for i, task in enumerate(prompt_sets):
                out = timed(partial(_one, model, task, method), what=f"{task_name}/{method}/{i}")
                if out.ok:
                    runs.append({**out.value, "seconds": out.seconds})
                else:
                    failures.append({"method": method, "resample": i, **out.to_dict()})
            per_method[method] = runs
        png = report.plot_path(out_dir, task_name)
        out_dir.mkdir(parents=True, exist_ok=True)
        _plot(png, f"{task_name} ({source}): faithfulness vs circuit size", per_method)

        rows, stab_rows = [], []
        task_data: dict[str, Any] = {
            "model": source,
            "n_edges": graph.n_edges,
            "metric": prompt_sets[0].metric.name,
            "failures": failures,
            "methods": {},
        }
        for method, runs in per_method.items():
            n_failed = sum(f["method"] == method for f in failures)
            status = "ok" if not n_failed else f"FAILED on {n_failed} of {n_resamples}"
            if n_failed:
                err = next(f["error"] for f in failures if f["method"] == method)
                status += f": {err}"
            stab = _stability(graph, runs) if runs else None
            rows.append(
                [
                    method,
                    _mean_std([r["cpr"] for r in runs]),
                    _mean_std([r["cmd"] for r in runs]),
                    *[
                        _mean_std([f for r in runs for p, f in r["curve_abs"] if p == pct])
                        for pct in (5.0, 10.0)
                    ],
                    _mean_std([r["seconds"] for r in runs]),
                    status,
                ]
            )
            if stab is not None:
                spread = stab["faithfulness_spread"]
                stab_rows.append(
                    [
                        method,
                        stab["k"],
                        stab["union"],
                        stab["in_all"],
                        stab["mean_jaccard"],
                        *[
                            (
                                f"{spread[str(p)]['min']:.3f} – {spread[str(p)]['max']:.3f}"
                                if str(p) in spread
                                else "n/a"
                            )
                            for p in SPREAD_PCTS
                        ],
                    ]
                )
            task_data["methods"][method] = {
                "runs": [
                    {k: v for k, v in r.items() if k != "scores"} | {"seed": seed + i}
                    for i, r in enumerate(runs)
                ],
                "stability": stab,
            }
        task_data["certified_vs_best"] = _certified_vs_best(per_method)
        data[task_name] = task_data
        summary[task_name] = {r[0]: {"cpr": r[1], "cmd": r[2]} for r in rows}
        report.add(
            f"## {task_name} (`{source}`, {graph.n_edges} edges, "
            f"metric {prompt_sets[0].metric.name})",
            "",
            f"![{task_name}]({png.name})",
            "",
            *md_table(["method", "CPR ↑", "CMD ↓", "f @ 5%", "f @ 10%", "time s", "status"], rows),
            *_certified_lines(task_data["certified_vs_best"]),
            f"Stability over {n_resamples} prompt sets:",
            "",
            *md_table(
                ["method", "k", "union", "in all", "Jaccard"]
                + [f"f @ {p:g}% (min – max)" for p in SPREAD_PCTS],
                stab_rows,
            ),
        )
    report.data["tasks"] = data
    files = report.write(out_dir)
    return {"files": files, "summary": summary}
