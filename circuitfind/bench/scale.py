"""Scale suite: EAP and EAP-IG on a graph of Llama-3.1-8B's shape, and time and peak memory of
every method at real model widths.

    circuitfind benchmark --suite scale [--quick] [--out reports/] [--seed 0]

Two parts, each measured in one run, back to back with its baseline:

- **big graph**: a random Llama of Llama-3.1-8B's graph shape (32 layers x 32 heads, 8 kv heads:
  1,592,881 edges), narrow enough for a CPU (small d_model, head_dim, d_mlp, vocab). EAP's time
  against its floor 2F + B and EAP-IG-inputs' against (k+1)F + kB (the method table's floors),
  and each one's peak memory against the plain HF forward + backward on the same batch. Each
  method runs twice: on the whole batch at once (time first), and as the memory plan runs it
  under a budget of 1.5 x the HF forward + backward's peak (its batch size and streaming). The
  score contraction (``C``: the [senders x tokens*d] x [tokens*d x receivers] products every
  edge score is, timed alone on random data of the run's shapes) is reported beside the floor:
  at this width it is most of the work, which no forward or backward count includes;
- **sizes**: every method at GPT-2-small, Qwen2.5-0.5B and Llama-3.2-1B sizes (random weights,
  the real widths and vocabularies; few prompts, short sequences). Exact patching, ACDC and node
  ablation take hours there on a CPU: they are timed on a sample of their passes and
  extrapolated (``bench.speed.measure``; the report says which rows are).

Peak memory is :func:`peak_rss`: the high-water mark of the process's resident memory during
the call (Linux ``VmHWM``, reset through ``/proc/self/clear_refs`` just before it) minus the
resident memory at the start, after ``gc`` and ``malloc_trim`` hand freed memory back. The
weights, already resident, are not counted; everything the call allocates is (the HF baseline's
parameter gradients included). Timings are medians with their min and max over ``repeat`` runs.
"""

from __future__ import annotations

import functools
import logging
import statistics
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import torch

from circuitfind.bench.common import Report, Timing, stamp, time_it
from circuitfind.bench.scale_measure import (
    _hf_memory,
    _meter_peak,
    _planned,
    _run_planned,
    _trim,
    contraction_seconds,
    peak_rss,
)
from circuitfind.bench.speed.cases import METHOD_NAMES, Case, SpeedConfig, make_case, random_task
from circuitfind.bench.speed.measure import hf_baseline, time_methods
from circuitfind.bench.speed.rules import apply_rules, cost_text, pass_rules, prepared_runs

__all__ = [
    "FULL",
    "QUICK",
    "SIZES",
    "BigShape",
    "ScaleConfig",
    "big_graph_model",
    "peak_rss",
    "run",
    "size_model",
]

logger = logging.getLogger(__name__)

TITLE = "Scale: an 8B-shape graph, and every method at real model widths (time, peak memory)"


def _spread(t: Timing) -> dict[str, Any]:
    return {"seconds": t.seconds, "min_s": min(t.runs), "max_s": max(t.runs), "runs": t.runs}


# ---------------------------------------------------------------------------- models
@dataclass(frozen=True)
class BigShape:
    """Llama-3.1-8B's graph (layers, heads, kv heads) at a width a CPU can run."""

    layers: int = 32
    heads: int = 32
    kv_heads: int = 8
    head_dim: int = 4
    d_model: int = 128
    d_mlp: int = 256
    vocab: int = 512

    @property
    def label(self) -> str:
        return (
            f"{self.layers}x{self.heads} (kv {self.kv_heads}) d{self.d_model} "
            f"head_dim {self.head_dim} mlp {self.d_mlp} vocab {self.vocab}"
        )


LLAMA_8B_EDGES = 1_592_881
"""The edge count of Llama-3.1-8B's graph (issue 14), checked against ``circuitfind.Graph``."""


def big_graph_model(shape: BigShape, seed: int) -> Any:
    """A random-weight HF Llama of ``shape`` (eager attention, eval mode)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    cfg = LlamaConfig(
        vocab_size=shape.vocab,
        hidden_size=shape.d_model,
        num_hidden_layers=shape.layers,
        num_attention_heads=shape.heads,
        num_key_value_heads=shape.kv_heads,
        head_dim=shape.head_dim,
        intermediate_size=shape.d_mlp,
        max_position_embeddings=256,
    )
    hf = LlamaForCausalLM(cfg).eval()
    hf.config._attn_implementation = "eager"
    return hf


SIZES: dict[str, dict[str, Any]] = {
    "GPT-2 small": {"family": "gpt2"},
    "Qwen2.5-0.5B": {
        "family": "qwen2",
        "vocab_size": 151936,
        "hidden_size": 896,
        "num_hidden_layers": 24,
        "num_attention_heads": 14,
        "num_key_value_heads": 2,
        "intermediate_size": 4864,
        "tie_word_embeddings": True,
    },
    "Llama-3.2-1B": {
        "family": "llama",
        "vocab_size": 128256,
        "hidden_size": 2048,
        "num_hidden_layers": 16,
        "num_attention_heads": 32,
        "num_key_value_heads": 8,
        "head_dim": 64,
        "intermediate_size": 8192,
        "tie_word_embeddings": True,
    },
}
"""The real models' widths (their published configs), built with random weights."""


def size_model(name: str, seed: int, layers: int | None = None) -> Any:
    """A random-weight HF model of size ``name`` (a key of ``SIZES``); ``layers`` truncates it
    (quick runs)."""
    import transformers as tf

    spec = dict(SIZES[name])
    family = spec.pop("family")
    torch.manual_seed(seed)
    if family == "gpt2":
        cfg: Any = tf.GPT2Config(n_layer=layers) if layers else tf.GPT2Config()
        hf: Any = tf.GPT2LMHeadModel(cfg)
    else:
        if layers:
            spec["num_hidden_layers"] = layers
        spec["max_position_embeddings"] = 256
        if family == "qwen2":
            hf = tf.Qwen2ForCausalLM(tf.Qwen2Config(**spec))
        else:
            hf = tf.LlamaForCausalLM(tf.LlamaConfig(**spec))
    hf = hf.eval()
    hf.config._attn_implementation = "eager"
    return hf


# ---------------------------------------------------------------------------- settings
@dataclass(frozen=True)
class ScaleConfig:
    """What the scale suite runs. ``QUICK`` and ``FULL`` are the two shipped settings."""

    big: BigShape = BigShape()
    big_prompts: int = 8
    big_tokens: int = 16
    repeat: int = 3
    ig_steps: int = 5
    sizes: tuple[str, ...] = tuple(SIZES)
    size_layers: int | None = None  # None: the real depth
    size_prompts: int = 4
    size_tokens: int = 16
    methods: tuple[str, ...] = METHOD_NAMES
    max_full_s: float = 120.0  # exact / ACDC / node run in full below this estimate
    exact_senders: int = 4  # exact: senders per sampled receiver, all in one batched pass


FULL = ScaleConfig(repeat=2, size_prompts=2)
QUICK = ScaleConfig(
    big=BigShape(layers=4, heads=8, kv_heads=2, d_model=64, head_dim=4, d_mlp=128, vocab=256),
    big_prompts=4,
    big_tokens=8,
    repeat=2,
    ig_steps=2,
    sizes=("GPT-2 small",),
    size_layers=2,
    size_prompts=2,
    size_tokens=8,
    max_full_s=0.0,
)


# ---------------------------------------------------------------------------- measuring
def big_graph(cfg: ScaleConfig, seed: int) -> dict[str, Any]:
    """EAP and EAP-IG-inputs on the big graph: time against the floor, peak memory against
    the HF forward + backward, all in this one call."""
    hf = big_graph_model(cfg.big, seed)
    case = make_case(
        f"random Llama {cfg.big.label}",
        hf,
        random_task(cfg.big.vocab, cfg.big_prompts, cfg.big_tokens, seed),
    )
    rules = pass_rules(SpeedConfig(ig_steps=cfg.ig_steps))
    before = hf_baseline(case, cfg.repeat)
    mem = _hf_memory(case)
    out: dict[str, Any] = {
        "shape": asdict(cfg.big),
        "edges": case.graph.n_edges,
        "edges_expected": LLAMA_8B_EDGES if cfg.big == BigShape() else None,
        "prompts": cfg.big_prompts,
        "tokens": cfg.big_tokens,
        "hf_memory": mem,
        "methods": {},
    }
    params = sum(p.numel() * p.element_size() for p in hf.parameters())
    budget = int(params + 1.5 * mem["FB_meter_bytes"])
    out["plan_budget_bytes"] = budget
    n = cfg.big_prompts
    contraction = functools.cache(lambda b: contraction_seconds(case, b, cfg.repeat))
    c_full = out["contraction_s"] = contraction(n)
    planned: dict[str, dict[str, Any]] = {}
    for name in ("eap", "eap-ig-inputs"):
        rule = rules[name]
        assert rule.run is not None
        one = functools.partial(rule.run, case, rule.options)
        t = time_it(one, cfg.repeat)
        peak = peak_rss(one)[0]
        out["methods"][name] = {
            **_spread(t),
            "peak_bytes": peak,
            "meter_bytes": _meter_peak(one),
            "how": "measured",
            "batch_size": n,
            "streaming": False,
            "contraction_s": c_full,
        }
        plan = _planned(case, name, dict(rule.options), budget)
        run_plan = functools.partial(_run_planned, case, name, dict(rule.options), plan)
        t = time_it(run_plan, cfg.repeat)
        planned[name] = {
            **_spread(t),
            "peak_bytes": peak_rss(run_plan)[0],
            "meter_bytes": _meter_peak(run_plan),
            "how": "measured",
            "batch_size": plan.batch_size,
            "streaming": plan.streaming,
            "plan_bytes": plan.working,
            "contraction_s": contraction(plan.batch_size),
        }
    after = hf_baseline(case, cfg.repeat)
    F_runs = before["F"].runs + after["F"].runs
    FB_runs = before["F+B"].runs + after["F+B"].runs
    F, FB = statistics.median(F_runs), statistics.median(FB_runs)
    out.update(hf_F_s=F, hf_FB_s=FB, hf_F_runs=F_runs, hf_FB_runs=FB_runs)
    units = {"run": 1, "edge": case.graph.n_edges, "node": 1}
    apply_rules(out["methods"], rules, F, FB, units)
    apply_rules(planned, rules, F, FB, units)
    out["planned"] = planned
    for name, m in [*out["methods"].items(), *planned.items()]:
        floor = m["seconds"] / m["ratio"]
        m["ratio_min"], m["ratio_max"] = m["min_s"] / floor, m["max_s"] / floor
        m["ratio_with_contraction"] = m["seconds"] / (floor + m["contraction_s"])
        m["memory_ratio"] = m["peak_bytes"] / mem["FB_bytes"] if mem["FB_bytes"] else None
        act = mem["FB_activations_bytes"]
        m["memory_ratio_activations"] = m["peak_bytes"] / act if act else None
        meter = mem["FB_meter_bytes"]
        m["meter_ratio"] = m["meter_bytes"] / meter if meter else None
        m["memory_target"] = 1.5
        m["memory_met"] = m["memory_ratio"] is not None and m["memory_ratio"] <= 1.5
        m["meter_met"] = m["meter_ratio"] is not None and m["meter_ratio"] <= 1.5
        m["cost"] = cost_text(rules[name])
    return out


def _one_exact_pass(case: Case, senders: int) -> None:
    """One batched exact-patching pass (``senders`` edges into a layer-0 head's query: the
    longest pass) from the clean cache, as ``score_exact`` makes it."""
    from circuitfind.methods.exact import _patched_logits
    from circuitfind.patching import edge_deltas

    model, graph = case.model, case.graph
    prep = prepared_runs(case).batches[0]
    batch = prep.batch
    b, p = batch.clean.shape
    r = next(rec.index for rec in graph.receivers if rec.layer == 0 and rec.qkv == "q")
    idx = torch.arange(min(senders, int(graph.n_upstream[r])))
    with torch.no_grad():
        ctx = model.context(batch.clean, batch.attention_mask)
        delta = edge_deltas(model, prep.cache, prep.clean_diff, idx).reshape(len(idx) * b, p, -1)
        _patched_logits(model, graph, prep.cache, ctx, batch.readout, r, delta)


def _method_memory(
    case: Case, name: str, rules: dict[str, Any], timed: dict[str, Any], senders: int
) -> float:
    """Peak bytes of one run of ``name`` (measured methods), or of one sampled batched pass
    (exact patching; ACDC and node ablation: one masked run), plus their score matrices."""
    if timed[name]["how"].startswith("measured"):
        rule = rules[name]
        return peak_rss(lambda: rule.run(case, rule.options))[0]
    if name == "exact":
        return peak_rss(lambda: _one_exact_pass(case, senders))[0]
    ev = prepared_runs(case).evaluator("kl")
    mask = case.graph.valid.clone().to(torch.float32)
    return peak_rss(lambda: ev(mask, start_layer=0))[0]


def sizes(
    cfg: ScaleConfig, seed: int, done: Callable[[list[dict[str, Any]]], Any] | None = None
) -> list[dict[str, Any]]:
    """Every method at each size: time (measured or extrapolated) and peak memory; ``done``
    is called with the rows so far after each size."""
    speed_cfg = replace(
        SpeedConfig(),
        repeat=cfg.repeat,
        ig_steps=cfg.ig_steps,
        methods=cfg.methods,
        max_full_s=cfg.max_full_s,
        exact_receivers_per_layer=1,
        exact_sample_senders=cfg.exact_senders,
        max_tokens_per_pass=cfg.exact_senders * cfg.size_prompts * cfg.size_tokens,
    )
    rules = pass_rules(speed_cfg)
    rows = []
    for name in cfg.sizes:
        logger.info("scale: %s", name)
        hf = size_model(name, seed, cfg.size_layers)
        params = sum(p.numel() for p in hf.parameters())
        case = make_case(
            name, hf, random_task(hf.config.vocab_size, cfg.size_prompts, cfg.size_tokens, seed)
        )
        before = hf_baseline(case, cfg.repeat)
        mem = _hf_memory(case)
        # one untimed EAP run first: the process's first attribution run pays one-off costs
        # (seen: 9.4 s, then 0.56 s, at GPT-2 small), which are no part of the method's time
        warm = rules["eap"]
        if warm.run is not None:
            warm.run(case, warm.options)
        timed = time_methods(case, speed_cfg, seed)
        timed.pop("_masked_pass_s_by_start_layer", None)
        for method in list(timed):
            timed[method]["peak_bytes"] = _method_memory(
                case, method, rules, timed, cfg.exact_senders
            )
        after = hf_baseline(case, cfg.repeat)
        F = statistics.median(before["F"].runs + after["F"].runs)
        FB = statistics.median(before["F+B"].runs + after["F+B"].runs)
        nodes = sum(1 for n in case.graph.senders if n.kind != "input")
        apply_rules(timed, rules, F, FB, {"run": 1, "edge": case.graph.n_edges, "node": nodes})
        rows.append(
            {
                "size": name,
                "params": params,
                "layers": case.model.cfg.n_layers,
                "heads": case.model.cfg.n_heads,
                "d_model": case.model.cfg.d_model,
                "edges": case.graph.n_edges,
                "prompts": cfg.size_prompts,
                "tokens": cfg.size_tokens,
                "hf_F_s": F,
                "hf_FB_s": FB,
                "hf_memory": mem,
                "methods": timed,
            }
        )
        del case, hf
        _trim()
        if done is not None:
            done(rows)
    return rows


# ---------------------------------------------------------------------------- report
def _mb(x: float | None) -> str:
    return "-" if x is None else f"{x / 2**20:,.1f}"


def _s(x: float) -> str:
    return f"{x:,.0f}" if x >= 100 else f"{x:.3f}"


def render(result: dict[str, Any], command: str) -> list[str]:
    b = result["big"]
    lines = [
        f"Command: `{command}`. Timings: median (min-max) of the runs; the HF baseline is timed "
        "before and after the methods in the same process and the median over both is F. Peak "
        "memory: the resident-memory high-water mark during the call minus the memory resident "
        "at its start (weights excluded; the HF backward's parameter gradients included).",
        "",
        "## Big graph",
        "",
        f"Random Llama, {BigShape(**b['shape']).label}: {b['edges']:,} edges"
        + (
            f" (Llama-3.1-8B's graph: {b['edges_expected']:,}; "
            f"{'equal' if b['edges'] == b['edges_expected'] else 'DIFFERENT'})"
            if b.get("edges_expected")
            else ""
        )
        + f"; {b['prompts']} prompts x {b['tokens']} tokens. HF F = {_s(b['hf_F_s'])} s, "
        f"F + B = {_s(b['hf_FB_s'])} s (medians of {len(b['hf_F_runs'])} runs); HF F + B peak "
        f"{_mb(b['hf_memory']['FB_bytes'])} MB (without parameter gradients: "
        f"{_mb(b['hf_memory']['FB_activations_bytes'])} MB), F peak "
        f"{_mb(b['hf_memory']['F_bytes'])} MB; live tensors at the HF F + B peak "
        f"{_mb(b['hf_memory'].get('FB_meter_bytes'))} MB (PeakMeter).",
        "",
    ]
    yes = {True: "yes", False: "**no**"}
    lines += [
        "Each method twice: the whole batch in one run (time first), and as the memory plan "
        "runs it under a budget of the weights plus 1.5 x the HF forward + backward's live "
        f"tensors ({_mb(b['plan_budget_bytes'])} MB in all): the batch it chose, streaming "
        "the prepared runs where it chose to. C is the score contraction alone (the "
        "[senders x tokens*d] x [tokens*d x receivers] products, random data of the run's "
        "shapes, no forward or backward): the edge scores' own arithmetic, which the floor "
        f"does not count. C = {_s(b['contraction_s'])} s for the whole batch against "
        f"2F + B = {_s(2 * b['hf_F_s'] + (b['hf_FB_s'] - b['hf_F_s']))} s.",
        "",
        "| method | run | seconds (min-max) | floor | time / floor (min-max) | target "
        "| met | C s | time / (floor + C) | tensor peak MB | / HF | resident peak MB "
        "| / HF | target | met |",
        "| --- | --- | --- | --- | --- | --- | --- | ---: | ---: | ---: | ---: | ---: | ---: "
        "| --- | --- |",
    ]
    rows = [("whole batch", k, m) for k, m in b["methods"].items()]
    rows += [
        (
            f"planned: batch {m['batch_size']}" + (", streaming" if m["streaming"] else ""),
            k,
            m,
        )
        for k, m in b["planned"].items()
    ]
    for how, name, m in sorted(rows, key=lambda r: r[1]):
        lines.append(
            f"| {name} | {how} | {_s(m['seconds'])} ({_s(m['min_s'])}-{_s(m['max_s'])}) "
            f"| {m['cost']} | {m['ratio']:.2f} ({m['ratio_min']:.2f}-{m['ratio_max']:.2f}) "
            f"| <= 1.3 | {yes[m['ratio'] <= 1.3]} | {_s(m['contraction_s'])} "
            f"| {m['ratio_with_contraction']:.2f} | {_mb(m['meter_bytes'])} "
            f"| {m['meter_ratio']:.2f} | {_mb(m['peak_bytes'])} | {m['memory_ratio']:.2f} "
            f"| <= 1.5 | tensors {yes[bool(m['meter_met'])]}, resident "
            f"{yes[bool(m['memory_met'])]} |"
        )
    lines += ["", "## Every method at real widths", ""]
    lines += [
        "Random weights at each model's real widths and vocabulary. Rows marked extrapolated "
        "were timed on a stratified sample of their passes (exact: sampled receivers; ACDC, "
        "node: one masked run per start layer) and scaled by edge or node count; ACDC's assumes "
        "every edge tried once, each trial timed with every other edge kept (real trials, with "
        "edges removed downstream, cost more: see the speed suite's ACDC comparison). Their "
        "peak memory is that of one sampled pass (exact) or one masked run (ACDC, node), the "
        "pass a full run repeats.",
        "",
    ]
    for row in result["sizes"]:
        lines += [
            f"### {row['size']}",
            "",
            f"{row['params'] / 1e6:,.0f}M parameters, {row['layers']} layers x {row['heads']} "
            f"heads, d_model {row['d_model']}, {row['edges']:,} edges; {row['prompts']} prompts "
            f"x {row['tokens']} tokens. HF F = {_s(row['hf_F_s'])} s, F + B = "
            f"{_s(row['hf_FB_s'])} s; HF F + B peak {_mb(row['hf_memory']['FB_bytes'])} MB "
            f"(without parameter gradients: {_mb(row['hf_memory']['FB_activations_bytes'])} MB).",
            "",
            "| method | seconds | x F | peak MB | / HF F+B peak | how |",
            "| --- | ---: | ---: | ---: | ---: | --- |",
        ]
        fb = row["hf_memory"]["FB_bytes"]
        for name in METHOD_NAMES:
            m = row["methods"].get(name)
            if m is None:
                continue
            rel = f"{m['peak_bytes'] / fb:.2f}" if fb else "-"
            lines.append(
                f"| {name} | {_s(m['seconds'])} | {m['x_F']:.1f} | {_mb(m['peak_bytes'])} "
                f"| {rel} | {m['how']} |"
            )
        lines.append("")
    return lines


def run(
    out_dir: Path,
    *,
    quick: bool,
    seed: int,
    config: ScaleConfig | None = None,
    command: str | None = None,
) -> dict[str, Any]:
    """Run the scale suite; write ``scale.md`` and ``scale.json`` under ``out_dir``."""
    cfg = config or (QUICK if quick else FULL)
    report = Report("scale", TITLE, stamp(seed, quick, command))
    logger.info("scale: big graph %s", cfg.big.label)
    result: dict[str, Any] = {
        "suite": "scale",
        "config": asdict(cfg),
        "big": big_graph(cfg, seed),
        "sizes": [],
    }

    def write(rows: list[dict[str, Any]], final: bool) -> dict[str, Any]:
        """Write the report so far (a long run keeps what it has measured)."""
        result["sizes"] = rows
        left = [s for s in cfg.sizes if s not in {r["size"] for r in rows}]
        report.lines = render(result, report.stamp["command"])
        if left and not final:
            report.add(f"Not yet measured (the run was still going): {', '.join(left)}.", "")
        report.data = result
        report.stamp.pop("wall_s", None)
        return report.write(Path(out_dir))

    write([], False)
    rows = sizes(cfg, seed, lambda rows: write(rows, False))
    files = write(rows, True)
    return {"stamp": report.stamp, **result, "files": files}
