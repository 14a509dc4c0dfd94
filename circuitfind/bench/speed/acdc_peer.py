"""ACDC against auto-circuit's ACDC at GPT-2-small size, on a sample of receivers.

A full ACDC run over GPT-2 small's 32,491 edges takes hours on a CPU for both tools, so both run
ACDC over the same stratified sample of edges, in the same order, on the same weights, prompts
and corrupted prompts (resample ablation, KL to the clean run at the last position):

- the sample: the logits and one receiver per layer (its kind cycling q, k, v, MLP), and
  ``senders`` of each one's incoming edges drawn at random; every other edge stays in, untried
  (``score_acdc(try_edges=...)`` here; in auto-circuit, its own ``acdc_prune_scores`` over that
  edge list, see ``benchmarks/autocircuit/run_autocircuit.py``);
- ``tau``: by default chosen from a pilot run of ours over the sample with nothing removed, the
  median KL increase rounded to one significant digit, so that the sample splits (a random
  model's KL changes are small, and a fixed tau could keep every edge or none);
- compared: every trial's KL (theirs recorded where their loop computes it), the kept edges,
  and the time of every trial; per start layer the median trial time of each and their ratio
  (with its range over the layers), the ratio over the whole sample, and each tool's full run
  extrapolated from its per-layer medians times the edges into that layer's receivers (every
  edge tried once: exact for auto-circuit, which tries every edge; an upper bound for ours,
  which skips the edges of nodes that no longer feed anything);
- the state the sample leaves out: in a full run the trials from a layer see every later
  receiver pruned, and ours cost more there. Both tools' trials are timed from several start
  layers with a fraction of every later receiver's edges removed at random (the sample's own
  removal rate, and 98%), and the full run is extrapolated again with each layer's measured
  cost in that state (:func:`full_run_in_state`).

    python -m circuitfind.bench.speed.acdc_peer [--quick] [--out reports] [--senders 12]
"""

from __future__ import annotations

import functools
import json
import math
import shutil
import statistics
import sys
import tempfile
import time
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

import torch

from circuitfind.bench.speed.cases import (
    Case,
    SpeedConfig,
    make_case,
    random_gpt2,
    random_task,
)
from circuitfind.bench.speed.peers import (
    _export,
    autocircuit_edge_name,
    ensure_venv,
    run_autocircuit,
    to_autocircuit_edge_name,
)

__all__ = [
    "against_autocircuit_acdc",
    "full_run_in_state",
    "removed_later",
    "round_tau",
    "sample_edges",
    "state_penalty",
    "trial_cost_by_state",
]

KINDS = ("q", "k", "v", "mlp")


def sample_edges(graph: Any, senders: int, seed: int) -> torch.Tensor:
    """bool [S, R]: the logits and one receiver per layer (kinds cycling q, k, v, MLP; the head
    drawn at random), each with ``senders`` of its incoming edges drawn at random (all when it
    has fewer)."""
    g = torch.Generator().manual_seed(seed)
    by_layer: dict[int, list[Any]] = {}
    chosen = [graph.receiver_index["logits"]]
    for rec in graph.receivers:
        if rec.layer is not None:
            by_layer.setdefault(rec.layer, []).append(rec)
    for layer, recs in sorted(by_layer.items()):
        kind = KINDS[layer % len(KINDS)]
        pool = [r for r in recs if (r.qkv or "mlp") == kind] or recs
        chosen.append(pool[int(torch.randint(len(pool), (1,), generator=g))].index)
    sample = torch.zeros_like(graph.valid)
    for r in chosen:
        up = graph.valid[:, r].nonzero().flatten()
        pick = up[torch.randperm(len(up), generator=g)[:senders]]
        sample[pick, r] = True
    return sample


def acdc_order(graph: Any, sample: torch.Tensor) -> list[tuple[int, int]]:
    """The sample's edges (sender, receiver) in ACDC's order: receivers from the logits back,
    senders from the last."""
    return [
        (s, r)
        for r in reversed(range(graph.n_receivers))
        for s in reversed(range(int(graph.n_upstream[r])))
        if sample[s, r]
    ]


def round_tau(x: float) -> tuple[int, int]:
    """``x`` as base x 10^exp with an integer base 1..9 (auto-circuit's tau grid)."""
    if not x > 0:
        raise ValueError(f"tau must be positive; got {x!r}")
    exp = math.floor(math.log10(x))
    base = round(x / 10**exp)
    if base == 10:
        base, exp = 1, exp + 1
    return base, exp


class _TimedEvaluator:
    """An evaluator that records every call's start layer, value and wall time."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.calls: list[tuple[int, float, float]] = []

    def __call__(self, mask: torch.Tensor, start_layer: int = 0) -> float:
        t0 = time.perf_counter()
        value = self.inner(mask, start_layer=start_layer)
        self.calls.append((start_layer, float(value), time.perf_counter() - t0))
        return value


def _ours(case: Case, sample: torch.Tensor, tau: float) -> dict[str, Any]:
    """Our ACDC over the sample, timed as a whole and per trial."""
    from circuitfind.bench.speed.rules import prepared_runs
    from circuitfind.methods.acdc import score_acdc

    t0 = time.perf_counter()
    runs = prepared_runs(case)
    make = runs.evaluator
    timed: list[_TimedEvaluator] = []

    def evaluator(metric: Any = None, **kw: Any) -> _TimedEvaluator:
        timed.append(_TimedEvaluator(make(metric, **kw)))
        return timed[-1]

    runs.evaluator = evaluator  # type: ignore[method-assign]
    result = score_acdc(runs, tau=tau, try_edges=sample)
    seconds = time.perf_counter() - t0
    calls = timed[0].calls[1:]  # the first is the full model's KL (zero), before any trial
    assert result.kept is not None  # ACDC always decides
    return {"seconds": seconds, "calls": calls, "kept": result.kept & sample}


def removed_later(graph: Any, start: int, fraction: float, gen: torch.Generator) -> torch.Tensor:
    """bool [S, R]: each edge into a receiver after layer ``start`` (the logits last) drawn with
    probability ``fraction``: a full ACDC run's state when its trials reach layer ``start``
    (receivers are visited from the last), with random removals in place of ACDC's own."""
    later = torch.tensor(
        [rec.layer is None or rec.layer > start for rec in graph.receivers], dtype=torch.bool
    )
    return graph.valid & (torch.rand(graph.valid.shape, generator=gen) < fraction) & later[None, :]


def trial_cost_by_state(
    case: Case, starts: tuple[int, ...] | None = None, fractions: tuple[float, ...] = (0.5, 0.98)
) -> list[dict[str, Any]]:
    """Our masked run (one ACDC trial) from each start layer (default: every layer), with every
    edge kept and with a fraction of every later receiver's edges removed at random
    (:func:`removed_later`; the sample's trials see every later edge kept). Median of 2 after
    a warm-up, in the same state: later receivers' sums over the earlier senders are then
    reused, as in a run's successive trials from one layer."""
    from circuitfind.bench.common import time_it
    from circuitfind.bench.speed.rules import prepared_runs

    ev = prepared_runs(case).evaluator("kl", reuse_prefix=True)  # as ACDC runs it
    g = case.graph
    full = g.valid.clone().float()
    ev(full)
    gen = torch.Generator().manual_seed(0)
    rows = []
    for start in range(case.model.cfg.n_layers) if starts is None else starts:
        row: dict[str, Any] = {"start_layer": start}
        row["kept_s"] = time_it(lambda: ev(full, start_layer=start), 2).seconds  # noqa: B023
        for frac in fractions:
            m = full.clone()
            m[removed_later(g, start, frac, gen)] = 0.0
            run = functools.partial(ev, m, start_layer=start)
            row[f"removed_{frac:g}_s"] = time_it(run, 2).seconds
        rows.append(row)
    return rows


def state_penalty(rows: list[dict[str, Any]], fraction: float) -> dict[int, float]:
    """Per start layer: a trial's cost with ``fraction`` of later edges removed over its cost
    with every edge kept."""
    return {row["start_layer"]: row[f"removed_{fraction:g}_s"] / row["kept_s"] for row in rows}


def full_run_in_state(
    medians: dict[int, float], edges: dict[int, int], penalty: dict[int, float]
) -> float:
    """A full run's seconds: each start layer's median sample trial, times its state penalty
    (1 where none was measured: the logits' trials, with nothing later), times the edges into
    that layer's receivers."""
    return sum(medians[k] * penalty.get(k, 1.0) * n for k, n in edges.items())


def _per_layer(layers: list[int], secs: list[float]) -> dict[int, float]:
    groups: dict[int, list[float]] = {}
    for layer, s in zip(layers, secs):
        groups.setdefault(layer, []).append(s)
    return {k: statistics.median(v) for k, v in sorted(groups.items())}


def sharp_case(cfg: SpeedConfig, seed: int, logit_scale: float) -> Case:
    """The speed suite's random GPT-2 with the final norm's weight times ``logit_scale``: a
    random model's next-token distributions are near uniform, and the KL changes of single
    edges (about 1e-6) sit at float32's noise in a 50,257-way KL; scaled logits put them well
    above it, so that both tools' decisions are about the model, not the rounding."""
    hf = random_gpt2(cfg.autocircuit_shape, seed)
    with torch.no_grad():
        hf.transformer.ln_f.weight.mul_(logit_scale)
    task = random_task(hf.config.vocab_size, cfg.prompts, cfg.tokens, seed)
    return make_case(f"random GPT-2 {cfg.autocircuit_shape.label}", hf, task)


def against_autocircuit_acdc(
    cfg: SpeedConfig,
    seed: int,
    senders: int = 12,
    tau: float | None = None,
    logit_scale: float = 10.0,
) -> dict[str, Any]:
    """The comparison (module docstring); ``{"available": False, "reason": ...}`` without the
    auto-circuit venv."""
    python, why = ensure_venv(cfg)
    if python is None:
        return {"available": False, "reason": why}
    case = sharp_case(cfg, seed, logit_scale)
    graph, L = case.graph, case.model.cfg.n_layers
    sample = sample_edges(graph, senders, seed)
    order = acdc_order(graph, sample)
    start_of = [
        graph.receivers[r].layer if graph.receivers[r].layer is not None else L for _, r in order
    ]
    tau_how = "given"
    if tau is None:  # pilot: every edge's KL increase with nothing removed
        pilot = _ours(case, sample, 0.0)
        tau = float(f"{statistics.median(v for _, v, _ in pilot['calls']):.0e}")
        tau_how = "the median KL increase of a pilot run with nothing removed"
    base, exp = round_tau(tau)
    tau = base * 10**exp
    ours = _ours(case, sample, tau)
    # the states timed: the sample's own removal rate at this tau, and a sparse circuit's
    rate = round(1.0 - int(ours["kept"].sum()) / len(order), 2)
    fractions = tuple(sorted({f for f in (rate, 0.98) if 0.0 < f < 1.0}))
    their_starts = sorted({1, L // 2, L - 1} & set(range(L)))

    work = Path(tempfile.mkdtemp(prefix="circuitfind-acdc-"))
    try:
        _export(case, work / "big")
        names = [to_autocircuit_edge_name(graph.edge_name(s, r)) for s, r in order]
        request = {
            "threads": torch.get_num_threads(),
            "models": {
                "big": {
                    "methods": ["acdc-sample", "acdc-state-cost"],
                    "acdc_edges": names,
                    "acdc_tau_base": base,
                    "acdc_tau_exp": exp,
                    "state_starts": their_starts,
                    "state_fractions": list(fractions),
                }
            },
        }
        (work / "request.json").write_text(json.dumps(request))
        theirs_all, why = run_autocircuit(python, work, cfg.autocircuit_timeout_s)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    if theirs_all is None:
        return {"available": False, "reason": why}
    tb = theirs_all["models"]["big"]
    theirs = tb["acdc-sample"]

    # trials: ours skips the edges of dead nodes, so align by the order of tried edges
    if len(ours["calls"]) != len(order) or len(theirs["trial_s"]) != len(order):
        return {
            "available": False,
            "reason": f"trial counts differ: ours {len(ours['calls'])}, theirs "
            f"{len(theirs['trial_s'])}, sample {len(order)} (a node went dead in the sample)",
        }
    our_s = [c[2] for c in ours["calls"]]
    kl_diff = max(abs(c[1] - k) for c, k in zip(ours["calls"], theirs["kl"]))
    ours_kept = {graph.edge_name(s, r) for s, r in order if ours["kept"][s, r]}
    their_kept = {autocircuit_edge_name(n) for n in theirs["kept"]}
    union = ours_kept | their_kept
    o_med, t_med = _per_layer(start_of, our_s), _per_layer(start_of, theirs["trial_s"])
    layer_ratio = {k: t_med[k] / o_med[k] for k in o_med}
    edges_from = {k: 0 for k in o_med}
    for rec in graph.receivers:
        start = rec.layer if rec.layer is not None else L
        edges_from[start] += int(graph.n_upstream[rec.index])
    ours_full = sum(o_med[k] * n for k, n in edges_from.items())
    theirs_full = sum(t_med[k] * n for k, n in edges_from.items())
    by_state = trial_cost_by_state(case, fractions=fractions)
    their_states = tb.get("acdc-state-cost", {}).get("rows", [])
    in_state = {}
    for f in fractions if their_states else ():  # no extrapolation without their state costs
        # theirs: the mean of their measured penalties, for every layer (their patched forward
        # is dense in the masks; the measurement checks it)
        theirs_pen = statistics.fmean(state_penalty(their_states, f).values())
        ours_f = full_run_in_state(o_med, edges_from, state_penalty(by_state, f))
        theirs_f = full_run_in_state(t_med, edges_from, {k: theirs_pen for k in t_med})
        in_state[f"{f:g}"] = {
            "ours_s": ours_f,
            "theirs_s": theirs_f,
            "ratio": theirs_f / ours_f,
            "their_penalty": theirs_pen,
        }
    return {
        "trial_cost_by_state": by_state,
        "their_trial_cost_by_state": their_states,
        "state_fractions": list(fractions),
        "sample_removal_rate": rate,
        "full_run_in_state": in_state,
        "available": True,
        "versions": theirs_all["versions"],
        "peak_rss_gb": theirs_all["peak_rss_gb"],
        "shape": asdict(cfg.autocircuit_shape),
        "edges": graph.n_edges,
        "their_edges": tb["n_edges"],
        "prompts": len(case.task),
        "tokens": cfg.tokens,
        "tl_vs_hf_max_abs_logit_diff": tb["tl_vs_hf_max_abs_logit_diff"],
        "sample_edges": len(order),
        "sample_receivers": int(sample.any(0).sum()),
        "senders_per_receiver": senders,
        "tau": tau,
        "tau_how": tau_how,
        "logit_scale": logit_scale,
        "max_abs_kl_diff": kl_diff,
        "kept": {
            "ours": len(ours_kept),
            "theirs": len(their_kept),
            "both": len(ours_kept & their_kept),
            "jaccard": len(ours_kept & their_kept) / len(union) if union else 1.0,
        },
        "seconds": {"ours": ours["seconds"], "theirs": theirs["seconds"]},
        "trial_seconds": {"ours": sum(our_s), "theirs": sum(theirs["trial_s"])},
        "per_layer": [
            {
                "start_layer": k,
                "trials": start_of.count(k),
                "ours_median_s": o_med[k],
                "theirs_median_s": t_med[k],
                "ratio": layer_ratio[k],
                "edges_in_full_graph": edges_from[k],
            }
            for k in o_med
        ],
        "ratio_sample": sum(theirs["trial_s"]) / sum(our_s),
        "ratio_layer_range": [min(layer_ratio.values()), max(layer_ratio.values())],
        "full_run_estimate_s": {"ours": ours_full, "theirs": theirs_full},
        "ratio_full_estimate": theirs_full / ours_full,
    }


def render(r: dict[str, Any]) -> list[str]:
    """The report's section."""
    lines = ["## ACDC against auto-circuit's, at GPT-2-small size, on a sample of receivers", ""]
    if not r.get("available"):
        return [*lines, f"Not run: {r.get('reason', 'unknown')}", ""]
    v = ", ".join(f"{k} {val}" for k, val in r["versions"].items())
    k = r["kept"]
    lo, hi = r["ratio_layer_range"]
    est = r["full_run_estimate_s"]
    lines += [
        f"Random GPT-2 {r['shape']['layers']}x{r['shape']['heads']} d{r['shape']['d_model']} "
        f"({r['edges']:,} edges ours, {r['their_edges']:,} theirs), {r['prompts']} prompts x "
        f"{r['tokens']} tokens, resample ablation, KL to the clean run at the last position, "
        f"tau {r['tau']:g} ({r['tau_how']}); the final norm's weight times {r['logit_scale']:g}, "
        "so that single edges' KL changes stand above float32's noise (module docstring). "
        f"auto-circuit: {v}; its TransformerLens model "
        f"matches the HF logits to {r['tl_vs_hf_max_abs_logit_diff']:.1e}; its peak memory "
        f"{r['peak_rss_gb']:.1f} GB. Both tools ran ACDC over the same {r['sample_edges']} edges "
        f"into {r['sample_receivers']} receivers (the logits and one per layer, "
        f"{r['senders_per_receiver']} random incoming edges each), in the same order; every "
        "other edge stayed in, untried.",
        "",
        f"- **Same result:** every trial's KL agrees to {r['max_abs_kl_diff']:.1e} (max abs); "
        f"kept edges: ours {k['ours']}, theirs {k['theirs']}, both {k['both']}, Jaccard "
        f"{k['jaccard']:.2f}.",
        f"- **Time over the sample's trials:** ours {r['trial_seconds']['ours']:.1f} s, theirs "
        f"{r['trial_seconds']['theirs']:.1f} s: **{r['ratio_sample']:.1f} x** (per start layer "
        f"{lo:.1f}-{hi:.1f} x). Whole calls, set-up included: ours {r['seconds']['ours']:.1f} s, "
        f"theirs {r['seconds']['theirs']:.1f} s.",
        f"- **A full run, extrapolated in the sample's state** (every later edge kept; per-layer "
        f"median trial x the edges into that layer's receivers, every edge tried once): ours "
        f"{est['ours'] / 3600:.2f} h, theirs "
        f"{est['theirs'] / 3600:.2f} h, **{r['ratio_full_estimate']:.1f} x**. One run of each: "
        "the spread is over layers, not repeats.",
        "",
        "| start layer | trials | ours median s | theirs median s | ratio | edges into it |",
        "| ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for row in r["per_layer"]:
        lines.append(
            f"| {row['start_layer']} | {row['trials']} | {row['ours_median_s']:.4f} | "
            f"{row['theirs_median_s']:.4f} | {row['ratio']:.1f} | "
            f"{row['edges_in_full_graph']:,} |"
        )
    lines += _render_states(r)
    return [*lines, ""]


def _state_table(rows: list[dict[str, Any]]) -> list[str]:
    keys = [k for k in rows[0] if k.startswith("removed_")]
    lines = [
        "| start layer | all kept s | "
        + " | ".join(f"{float(k.split('_')[1]):.0%} removed s" for k in keys)
        + " | cost vs all kept |",
        "| ---: | ---: | " + " | ".join("---:" for _ in keys) + " | --- |",
    ]
    for row in rows:
        rel = ", ".join(f"{row[k] / row['kept_s']:.2f} x" for k in keys)
        cells = " | ".join(f"{row[k]:.3f}" for k in keys)
        lines.append(f"| {row['start_layer']} | {row['kept_s']:.3f} | {cells} | {rel} |")
    return lines


def _render_states(r: dict[str, Any]) -> list[str]:
    """The trials' cost in a full run's states, each tool's, and the full run extrapolated."""
    ours, theirs = r.get("trial_cost_by_state") or [], r.get("their_trial_cost_by_state") or []
    if not ours:
        return []
    fracs = ", ".join(f"{f:.0%}" for f in r["state_fractions"])
    lines = [
        "",
        "**What the sample leaves out, measured.** In the sample every later receiver keeps all "
        "its edges; in a full run, the trials from a layer see every later receiver already "
        "pruned. Each tool's trial, from several start layers, with every edge kept and with "
        f"{fracs} of every later receiver's edges removed at random "
        f"({r['sample_removal_rate']:.0%}: the sample's own removal rate at this tau; 98%: a "
        "sparse circuit's). Ours (one masked run, median of 2 after a warm-up):",
        "",
        *_state_table(ours),
    ]
    if not theirs:
        return [*lines, "", "auto-circuit's state costs were not measured: no full run estimate."]
    lines += ["", "auto-circuit's (one patched forward from the start layer, median of 2):"]
    lines += ["", *_state_table(theirs)]
    lines += [
        "",
        "- **A full run, extrapolated in those states** (each start layer's median sample trial "
        "x that tool's measured cost in the state x the edges into that layer's receivers; "
        "auto-circuit's cost taken as its mean over the layers it was timed at; every edge tried "
        "once):",
    ]
    for f, e in r["full_run_in_state"].items():
        lines.append(
            f"  - {float(f):.0%} of later edges removed: ours {e['ours_s'] / 3600:.2f} h, theirs "
            f"{e['theirs_s'] / 3600:.2f} h (their state cost {e['their_penalty']:.2f} x): "
            f"**{e['ratio']:.1f} x**."
        )
    lines.append(
        "  Random removals stand in for ACDC's own, and each state was timed once (2 runs): "
        "read these as estimates, the spread being that of the per-layer costs above."
    )
    return lines


def main(argv: list[str] | None = None) -> None:
    """``python -m circuitfind.bench.speed.acdc_peer [--quick] [--out reports]``: this
    comparison alone, written to ``speed_acdc.md`` / ``.json``."""
    import argparse

    from circuitfind.bench.common import Report, stamp
    from circuitfind.bench.speed.cases import FULL, QUICK

    ap = argparse.ArgumentParser(description=main.__doc__)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--out", type=Path, default=Path("reports"))
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--senders", type=int, default=12, help="incoming edges per sampled receiver")
    ap.add_argument("--tau", type=float, default=None, help="default: from a pilot run")
    ap.add_argument(
        "--logit-scale", type=float, default=10.0, help="the final norm's weight times this"
    )
    ap.add_argument(
        "--states-only",
        action="store_true",
        help="only our trial's cost by state (no auto-circuit): speed_acdc_states.md",
    )
    args = ap.parse_args(argv)
    cfg = replace(QUICK if args.quick else FULL, build_venv=not args.quick)
    command = " ".join(["python -m circuitfind.bench.speed.acdc_peer", *sys.argv[1:]])
    started = stamp(args.seed, args.quick, command)
    if args.states_only:
        case = sharp_case(cfg, args.seed, args.logit_scale)
        fractions = (0.47, 0.98)  # the full comparison's sample removal rate, a sparse circuit's
        result = {"trial_cost_by_state": trial_cost_by_state(case, fractions=fractions)}
        report = Report("speed_acdc_states", "Speed: our ACDC trial by circuit state", started)
        report.add(
            f"{case.name}: one masked run (median of 2 after a warm-up) from each start layer, "
            f"every edge kept and {', '.join(f'{f:.0%}' for f in fractions)} of every later "
            "receiver's edges removed at random (`trial_cost_by_state`).",
            "",
            *_state_table(result["trial_cost_by_state"]),
            "",
        )
        report.data = result
        report.write(args.out)
        return
    result = against_autocircuit_acdc(cfg, args.seed, args.senders, args.tau, args.logit_scale)
    report = Report("speed_acdc", "Speed: ACDC against auto-circuit's", started)
    report.add(*render(result))
    report.data = result
    report.write(args.out)


if __name__ == "__main__":
    main()
