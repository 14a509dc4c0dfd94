"""The speed suite's measurements: the bare HF forward / backward, every method on a case
(measured, or extrapolated from a sample of its passes where a full run would take hours), and
the scaling against prompts and graph size."""

from __future__ import annotations

import functools
import logging
import statistics
from dataclasses import replace
from typing import Any

import torch
from torch import Tensor

from circuitfind.bench.common import Timing, time_it
from circuitfind.bench.speed.bounds import exact_bound
from circuitfind.bench.speed.cases import (
    Case,
    SpeedConfig,
    make_case,
    random_case,
    random_gpt2,
    random_task,
)
from circuitfind.bench.speed.rules import PassRule, apply_rules, pass_rules, prepared_runs

__all__ = [
    "acdc_estimate",
    "exact_sample_rate",
    "hf_baseline",
    "masked_pass_times",
    "measure_case",
    "node_estimate",
    "scaling",
    "time_methods",
]

logger = logging.getLogger(__name__)


def hf_baseline(case: Case, repeat: int) -> dict[str, Timing]:
    """The bare HF model's forward and forward + backward over the task's clean batch."""
    hf, task = case.hf, case.task
    device = next(hf.parameters()).device
    tokens = task.clean.to(device)
    mask = task.attention_mask.to(device) if task.attention_mask is not None else None
    readout = task.readout.to(device)
    rows = torch.arange(len(task), device=device)

    def forward() -> None:
        with torch.no_grad():
            hf(input_ids=tokens, attention_mask=mask)

    def forward_backward() -> None:
        hf.zero_grad(set_to_none=True)
        logits = hf(input_ids=tokens, attention_mask=mask).logits[rows, readout]
        logits.float().logsumexp(-1).sum().backward()

    out = {"F": time_it(forward, repeat), "F+B": time_it(forward_backward, repeat)}
    hf.zero_grad(set_to_none=True)
    return out


def exact_sample_rate(case: Case, cfg: SpeedConfig, seed: int) -> tuple[float, int, int]:
    """Exact patching of every edge, estimated: (seconds, sampled edges, sampled receivers).

    A stratified sample of receivers (``exact_receivers_per_layer`` per layer, split between
    attention and MLP receivers, plus the logits) is run through the same patched pass that
    ``score_exact`` uses, one chunk of senders each; every receiver's edges are then costed at
    the per-edge rate of a sampled receiver of its layer and kind.
    """
    from circuitfind.methods.exact import _patched_logits, tokens_per_pass

    model, graph, task = case.model, case.graph, case.task
    prep = prepared_runs(case).batches[0]
    batch = prep.batch
    b, p = batch.clean.shape
    # the passes score_exact makes: as many senders per pass as its token budget allows
    per_pass = max(1, (cfg.max_tokens_per_pass or tokens_per_pass(model.device)) // (b * p))
    chunk = max(per_pass, cfg.exact_sample_senders)
    rng = torch.Generator().manual_seed(seed)
    sample: list[int] = []
    for layer in range(model.cfg.n_layers):
        rs = [r for r in graph.receivers if r.layer == layer]
        attn = [r.index for r in rs if r.qkv is not None]
        mlp = [r.index for r in rs if r.qkv is None]
        k = max(1, cfg.exact_receivers_per_layer - 1)
        pick = torch.randperm(len(attn), generator=rng)[:k]
        sample += [attn[int(i)] for i in pick]
        if cfg.exact_receivers_per_layer > 1 or layer == model.cfg.n_layers - 1:
            sample += mlp
    sample.append(graph.receiver_index["logits"])
    rate: dict[int, float] = {}
    edges = 0
    with torch.no_grad():
        _, cache = model.run_with_cache(batch.clean, batch.attention_mask)
        diff = cache.node_outputs() - prep.ablated.expand(-1, *cache.input.shape)
        ctx = model.context(batch.clean, batch.attention_mask)
        for r in sample:
            senders = torch.arange(0, min(chunk, int(graph.n_upstream[r])))

            def one(r: int = r, senders: Tensor = senders) -> None:
                for part in senders.split(per_pass):
                    delta = -diff[part].reshape(len(part) * b, p, -1)
                    logits = _patched_logits(model, graph, cache, ctx, batch.readout, r, delta)
                    task.metric_fn(logits.float(), batch.idx.repeat(len(part)), reduce="none")

            rate[r] = time_it(one, 1, warmup=False).seconds / len(senders)
            edges += len(senders)
    est = 0.0
    for rec in graph.receivers:
        same = [
            r
            for r in sample
            if graph.receivers[r].layer == rec.layer
            and (graph.receivers[r].qkv is None) == (rec.qkv is None)
        ] or [r for r in sample if graph.receivers[r].layer == rec.layer]
        est += statistics.mean(rate[r] for r in same) * int(graph.n_upstream[rec.index])
    return est, edges, len(sample)


def masked_pass_times(case: Case, metric: Any, repeat: int) -> dict[int, float]:
    """Median time of one masked run (the pass ACDC and node ablation make) per start layer."""
    ev = prepared_runs(case).evaluator(metric)
    mask = case.graph.valid.clone().to(torch.float32)
    L = case.model.cfg.n_layers
    return {
        start: time_it(functools.partial(ev, mask, start_layer=start), repeat).seconds
        for start in range(L + 1)
    }


def acdc_estimate(case: Case, per_start: dict[int, float]) -> float:
    """ACDC's time if it tries every edge once, each trial costing a masked run with every edge
    kept. The count is an upper bound (ACDC skips dead nodes' edges); the cost per trial is not:
    a real run's trials, with many edges removed downstream, read per-head inputs and cost more
    (``circuitfind.bench.speed.acdc_peer`` times real trials)."""
    L = case.model.cfg.n_layers
    total = per_start[0]
    for rec in case.graph.receivers:
        start = rec.layer if rec.layer is not None else L
        total += per_start[start] * int(case.graph.n_upstream[rec.index])
    return total


def node_estimate(case: Case, per_start: dict[int, float]) -> float:
    """Node ablation's time: one masked run per head and MLP, from its first affected layer."""
    cfg = case.model.cfg
    L = cfg.n_layers
    total = per_start[0]
    for node in case.graph.senders:
        if node.kind == "input":
            continue
        start = node.layer + 1 if node.layer + 1 < L else L - 1
        if node.kind == "head" and not cfg.parallel_attn_mlp:
            start = node.layer
        total += per_start[max(0, min(start, L - 1))]
    return total


def _n_nodes(case: Case) -> int:
    """Heads and MLPs (the nodes node ablation removes one at a time)."""
    return sum(1 for node in case.graph.senders if node.kind != "input")


def _extrapolate(
    name: str, case: Case, cfg: SpeedConfig, seed: int, per_start: dict[int, float]
) -> tuple[float, str]:
    """(estimated seconds of a full run, how) for the methods too slow to run in full."""
    if name == "exact":
        est, edges, receivers = exact_sample_rate(case, cfg, seed)
        return est, f"extrapolated from {edges} edges into {receivers} sampled receivers"
    if name == "acdc":
        return (
            acdc_estimate(case, per_start),
            "extrapolated: one masked run per edge, timed per start layer with every edge kept "
            "(real trials cost more: speed_acdc.md)",
        )
    return (
        node_estimate(case, per_start),
        "extrapolated: one masked run per node, timed per start layer",
    )


EXTRAPOLATED = ("exact", "acdc", "node")
"""Methods timed on a sample of their passes when a full run would exceed ``max_full_s``."""
MASKED = ("acdc", "node")
"""Methods whose passes are masked runs (their estimates need ``masked_pass_times``)."""
MEASURED_HOW = {"acdc": "measured (tau 0.01, KL)"}


def _measured(rule: PassRule, case: Case, repeat: int, warmup: bool) -> Timing:
    run = rule.run
    assert run is not None
    return time_it(lambda: run(case, rule.options), repeat, warmup=warmup)


def time_methods(case: Case, cfg: SpeedConfig, seed: int) -> dict[str, dict[str, Any]]:
    """Wall time of every method in ``cfg.methods`` on ``case``: {method: {seconds, how, ...}}.

    Methods that can always run in full are timed first: the first with a warm-up run and
    ``cfg.repeat`` repeats, the next ones (sharing its code path, already warm) with
    ``max(1, repeat - 2)``. Then exact, ACDC and node ablation: run once in full when their
    estimate is within ``cfg.max_full_s``, else extrapolated (the ``how`` says which).
    """
    rules = {k: v for k, v in pass_rules(cfg).items() if k in cfg.methods}
    out: dict[str, dict[str, Any]] = {}
    first = True
    for name, rule in rules.items():
        if name in EXTRAPOLATED:
            continue
        reps = cfg.repeat if first else max(1, cfg.repeat - 2)
        t = _measured(rule, case, reps, warmup=first)
        first = False
        out[name] = {"seconds": t.seconds, "runs": t.runs, "how": "measured"}
        if "steps" in rule.options:
            out[name]["steps"] = int(rule.options["steps"])

    per_start: dict[int, float] = {}
    if set(MASKED) & set(rules):
        per_start = masked_pass_times(case, "kl", max(1, cfg.repeat - 2))

    for name in EXTRAPOLATED:
        if name not in rules:
            continue
        est, how = _extrapolate(name, case, cfg, seed, per_start)
        if est <= cfg.max_full_s:
            t = _measured(rules[name], case, 1, warmup=False)
            out[name] = {
                "seconds": t.seconds,
                "runs": t.runs,
                "how": MEASURED_HOW.get(name, "measured"),
            }
        else:
            out[name] = {"seconds": est, "how": how}
    if per_start:
        out["_masked_pass_s_by_start_layer"] = {"seconds": 0.0, "how": "", "by_layer": per_start}
    return out


def measure_case(case: Case, cfg: SpeedConfig, seed: int) -> dict[str, Any]:
    """HF baseline, our forward and every method on ``case``; the baseline is timed before and
    after the methods and its median over both is the denominator of every ratio."""
    before = hf_baseline(case, cfg.repeat)

    def ours_forward() -> None:
        with torch.no_grad():  # like the HF forward it is compared with
            case.model(case.task.clean.to(case.model.device), case.task.attention_mask)

    ours_F = time_it(ours_forward, max(2, cfg.repeat))
    methods = time_methods(case, cfg, seed)
    after = hf_baseline(case, cfg.repeat)
    F = statistics.median(before["F"].runs + after["F"].runs)
    FB = statistics.median(before["F+B"].runs + after["F+B"].runs)
    per_start = methods.pop("_masked_pass_s_by_start_layer", {}).get("by_layer", {})
    units = {"run": 1, "edge": case.graph.n_edges, "node": _n_nodes(case)}
    apply_rules(methods, pass_rules(cfg), F, FB, units)
    n, T = case.batch_tokens
    return {
        "case": case.name,
        "layers": case.model.cfg.n_layers,
        "heads": case.model.cfg.n_heads,
        "d_model": case.model.cfg.d_model,
        "edges": case.graph.n_edges,
        "nodes": units["node"],
        "prompts": n,
        "tokens": T,
        "hf_F_s": F,
        "hf_FB_s": FB,
        "hf_F_runs": before["F"].runs + after["F"].runs,
        "hf_FB_runs": before["F+B"].runs + after["F+B"].runs,
        "ours_F_s": ours_F.seconds,
        "masked_pass_s_by_start_layer": per_start,
        "methods": methods,
        "exact_bound": exact_bound(case.model.cfg, case.graph, T),
    }


# ---------------------------------------------------------------------------- scaling
def scaling(cfg: SpeedConfig, seed: int) -> dict[str, list[dict[str, Any]]]:
    """Time against the number of prompts (HF F, F + B, EAP) and against graph size (the same
    and exact patching of every edge, estimated as above)."""
    reps = cfg.scaling_repeat
    sub = replace(cfg, repeat=reps, max_full_s=0.0)
    eap_rule = pass_rules(cfg)["eap"]

    def point(case: Case, with_exact: bool) -> dict[str, Any]:
        base = hf_baseline(case, reps)
        eap = _measured(eap_rule, case, reps, warmup=True).seconds
        exact = exact_sample_rate(case, sub, seed)[0] if with_exact else None
        F, FB = base["F"].seconds, base["F+B"].seconds
        n, T = case.batch_tokens
        return {
            "layers": case.model.cfg.n_layers,
            "heads": case.model.cfg.n_heads,
            "d_model": case.model.cfg.d_model,
            "edges": case.graph.n_edges,
            "prompts": n,
            "tokens": T,
            "hf_F_s": F,
            "hf_FB_s": FB,
            "eap_s": eap,
            "eap_vs_2F_plus_B": eap / (2 * F + max(FB - F, 0.0)),
            "exact_all_edges_s": exact,
        }

    prompts = []
    hf = random_gpt2(cfg.scaling_shape, seed)
    for n in cfg.scaling_prompts:
        logger.info("scaling: %d prompts", n)
        task = random_task(hf.config.vocab_size, n, cfg.tokens, seed)
        prompts.append(point(make_case(f"{cfg.scaling_shape.label} n{n}", hf, task), False))
    sizes = []
    for shape in cfg.scaling_shapes:
        logger.info("scaling: %s", shape.label)
        sizes.append(point(random_case(shape, cfg.prompts, cfg.tokens, seed), True))
    return {"prompts": prompts, "graph_size": sizes}
