"""How well EAP and EAP-IG rank edges like exact patching, as the number of IG steps grows.

For each model and prompt set: exact patching (``metric(edge ablated) - metric(clean)``, resample
ablation), EAP, and EAP-IG-inputs / EAP-IG-activations at several step counts, all over every
edge of the graph. Agreement with exact patching is measured two ways:

- Spearman's rho over all edges (average ranks for ties);
- top-k overlap: |top-k(exact) & top-k(method)| / k, k = ``TOP_PCT``% of the edges, by |score|.

Each number is the mean over R prompt sets (random-weight models: R seeds, each a fresh model and
fresh prompts; zoo models: R prompt sets of the built-in task), reported with its standard
deviation and range over the sets, and the change from one step (paired per set, with its
standard deviation), which is what says whether agreement rises or falls with more steps.
EAP-IG with one step is EAP exactly (a tested identity), so the one-step column is EAP's.

Random-weight models are one small model per family the engine supports (GPT-2, GPT-NeoX with
parallel attention/MLP, Llama with grouped-query attention, Qwen2, Mistral with a sliding window,
GPT-Neo; Llama also without GQA, and with its SwiGLU gate held constant, as controls), with
weights drawn as in the tests (spread ``WEIGHT_SCALE``: sharp attention), on
prompts of random tokens whose corrupted version resamples ``N_SWAPPED`` tokens (minimal pairs,
as real tasks are), logit-difference metric.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from torch import Tensor

from circuitfind.bench.common import Report, md_table, stamp, timed

__all__ = ["FAMILIES", "ZOO", "agreement", "random_family_model", "run"]

logger = logging.getLogger(__name__)

VOCAB = 101
WEIGHT_SCALE = 0.25
N_SWAPPED = 2
TOP_PCT = 10.0
FULL_STEPS = (1, 2, 5, 10, 20, 50)
QUICK_STEPS = (1, 2, 5, 20)
ZOO: tuple[tuple[str, str], ...] = (
    ("zoo:induction-2l", "induction"),
    ("zoo:ioi", "ioi"),
    ("zoo:greater-than", "greater-than"),
)
REFERENCE = "eap-ig-inputs as EAP-IG's code sums it"
IG_MODES: tuple[Literal["eap-ig-inputs", "eap-ig-activations"], ...] = (
    "eap-ig-inputs",
    "eap-ig-activations",
)


def _configs() -> dict[str, Callable[[], Any]]:
    from transformers import (
        GPT2Config,
        GPT2LMHeadModel,
        GPTNeoConfig,
        GPTNeoForCausalLM,
        GPTNeoXConfig,
        GPTNeoXForCausalLM,
        LlamaConfig,
        LlamaForCausalLM,
        MistralConfig,
        MistralForCausalLM,
        Qwen2Config,
        Qwen2ForCausalLM,
    )

    return {
        "gpt2": lambda: GPT2LMHeadModel(
            GPT2Config(vocab_size=VOCAB, n_embd=48, n_layer=3, n_head=4, n_positions=64)
        ),
        "gpt_neox (parallel)": lambda: GPTNeoXForCausalLM(
            GPTNeoXConfig(
                vocab_size=VOCAB,
                hidden_size=48,
                num_hidden_layers=3,
                num_attention_heads=4,
                intermediate_size=96,
                rope_parameters={
                    "rope_type": "default",
                    "rope_theta": 10000.0,
                    "partial_rotary_factor": 0.25,
                },
                use_parallel_residual=True,
            )
        ),
        "llama (GQA)": lambda: LlamaForCausalLM(
            LlamaConfig(
                vocab_size=VOCAB,
                hidden_size=48,
                num_hidden_layers=3,
                num_attention_heads=6,
                num_key_value_heads=2,
                intermediate_size=64,
                max_position_embeddings=64,
            )
        ),
        "llama (MHA)": lambda: LlamaForCausalLM(
            LlamaConfig(
                vocab_size=VOCAB,
                hidden_size=48,
                num_hidden_layers=3,
                num_attention_heads=6,
                num_key_value_heads=6,
                intermediate_size=64,
                max_position_embeddings=64,
            )
        ),
        "llama (GQA, constant gate)": lambda: LlamaForCausalLM(
            LlamaConfig(
                vocab_size=VOCAB,
                hidden_size=48,
                num_hidden_layers=3,
                num_attention_heads=6,
                num_key_value_heads=2,
                intermediate_size=64,
                max_position_embeddings=64,
                mlp_bias=True,
            )
        ),
        "qwen2 (GQA)": lambda: Qwen2ForCausalLM(
            Qwen2Config(
                vocab_size=VOCAB,
                hidden_size=48,
                num_hidden_layers=3,
                num_attention_heads=4,
                num_key_value_heads=2,
                intermediate_size=64,
                tie_word_embeddings=True,
            )
        ),
        "mistral (GQA, sliding)": lambda: MistralForCausalLM(
            MistralConfig(
                vocab_size=VOCAB,
                hidden_size=32,
                num_hidden_layers=3,
                num_attention_heads=4,
                num_key_value_heads=2,
                intermediate_size=48,
                sliding_window=5,
            )
        ),
        "gpt_neo": lambda: GPTNeoForCausalLM(
            GPTNeoConfig(
                vocab_size=VOCAB,
                hidden_size=32,
                num_layers=3,
                num_heads=4,
                attention_types=[[["global", "local"], 1], [["global"], 1]],
                window_size=4,
                max_position_embeddings=64,
            )
        ),
    }


FAMILIES: tuple[str, ...] = (
    "gpt2",
    "gpt_neox (parallel)",
    "llama (GQA)",
    "llama (MHA)",
    "llama (GQA, constant gate)",
    "qwen2 (GQA)",
    "mistral (GQA, sliding)",
    "gpt_neo",
)


def random_family_model(family: str, seed: int, scale: float = WEIGHT_SCALE) -> Any:
    """A random-weight HF model of ``family`` (eager attention, eval mode): matrices drawn
    N(0, scale^2), norm weights 1 + N(0, 0.04), norm biases N(0, 0.04)."""
    torch.manual_seed(seed)
    hf = _configs()[family]()
    hf.config._attn_implementation = "eager"
    with torch.no_grad():
        for name, p in hf.named_parameters():
            if "norm" in name or "ln" in name:
                if p.dim() == 1 and "weight" in name:
                    p.copy_(1.0 + 0.2 * torch.randn_like(p))
                else:
                    p.copy_(0.2 * torch.randn_like(p))
            else:
                p.normal_(0.0, scale)
        if "constant gate" in family:  # a control: SwiGLU's gate held at silu(4), MLP linear
            for layer in hf.model.layers:
                layer.mlp.gate_proj.weight.zero_()
                layer.mlp.gate_proj.bias.fill_(4.0)
                layer.mlp.up_proj.weight.mul_(0.25)  # keeps the MLP's output size comparable
    return hf.eval()


def minimal_pairs(n: int, tokens: int, seed: int) -> Any:
    """n random prompts; each corrupted prompt resamples ``N_SWAPPED`` of its tokens (not the
    last), logit difference between two random tokens."""
    from circuitfind.tasks import Task

    g = torch.Generator().manual_seed(seed)
    clean = torch.randint(0, VOCAB, (n, tokens), generator=g)
    corrupted = clean.clone()
    for i in range(n):
        pos = torch.randperm(tokens - 1, generator=g)[:N_SWAPPED]
        corrupted[i, pos] = (
            clean[i, pos] + torch.randint(1, VOCAB, (N_SWAPPED,), generator=g)
        ) % VOCAB
    return Task.from_tokens(
        clean,
        corrupted,
        answer=torch.randint(0, VOCAB, (n,), generator=g),
        wrong=torch.randint(0, VOCAB, (n,), generator=g),
        name="random minimal pairs",
    )


def _ranks(x: np.ndarray) -> np.ndarray:
    from scipy.stats import rankdata

    return np.asarray(rankdata(x), dtype=np.float64)


def agreement(exact: Tensor, other: Tensor, valid: Tensor, top_pct: float = TOP_PCT) -> dict:
    """Spearman's rho over the valid edges, and the top-k overlap by |score|."""
    a = exact[valid].double().numpy()
    b = other[valid].double().numpy()
    ra, rb = _ranks(a), _ranks(b)
    rho = float(np.corrcoef(ra, rb)[0, 1]) if ra.std() > 0 and rb.std() > 0 else float("nan")
    k = max(1, round(len(a) * top_pct / 100))
    top_a = set(np.argsort(-np.abs(a), kind="stable")[:k].tolist())
    top_b = set(np.argsort(-np.abs(b), kind="stable")[:k].tolist())
    return {"spearman": rho, "top_k": len(top_a & top_b) / k, "k": k}


def swapped(task: Any) -> Any:
    """The task with clean and corrupted prompts exchanged (same answers and metric)."""
    import dataclasses

    return dataclasses.replace(task, clean=task.corrupted, corrupted=task.clean, clean_logits=None)


def method_edges(runs: Any, method: str, **options: Any) -> Tensor:
    """Edge scores [S, R] of ``method`` (a row of the method table) over prepared runs."""
    from circuitfind.methods import method_spec

    return method_spec(method).function()(runs, **options).edges  # type: ignore[no-any-return]


def corrupted_point_scores(model: Any, task: Any, batch_size: int = 32) -> Tensor:
    """(A_s - out_s) . g_r(0): the gradient at the corrupted run (alpha = 0 of the input path),
    under resample ablation. It is minus EAP on the swapped task, whose "clean" run is the
    corrupted one and whose difference is the opposite one."""
    from circuitfind.runs import PreparedRuns

    other = PreparedRuns(model, swapped(task), "resample", batch_size=batch_size)
    return -method_edges(other, "eap")


def reference_code_scores(ig: Tensor, eap: Tensor, at_corrupted: Tensor, steps: int) -> Tensor:
    """EAP-IG-inputs as EAP-IG's current code sums it (alpha = k/steps, k = 0..steps-1) from
    circuitfind's right sum S (k = 1..steps): L = S + (g(0) - g(1)) / steps, scores taken."""
    return ig + (at_corrupted - eap) / steps


def _one(model: Any, task: Any, steps: tuple[int, ...]) -> dict[str, Any]:
    """Scores of every method on one prompt set, and their agreement with exact patching."""
    from circuitfind.runs import PreparedRuns

    runs = PreparedRuns(model, task, "resample", batch_size=32)
    graph = runs.graph
    exact = method_edges(runs, "exact")
    eap = method_edges(runs, "eap")
    clean = float(task.metric_fn(task.run(model, "clean")).mean())
    corrupted = float(task.metric_fn(task.run(model, "corrupted")).mean())
    out: dict[str, Any] = {
        "n_edges": graph.n_edges,
        "metric_clean": clean,
        "metric_corrupted": corrupted,
        "eap": agreement(exact, eap, graph.valid),
    }
    v = graph.valid
    size = exact[v].abs()
    top, rest = v.clone(), v.clone()
    top[v] = size >= size.quantile(1 - TOP_PCT / 100)
    rest[v] = ~top[v]
    for mode in IG_MODES:
        out[mode] = {"1": out["eap"]}  # one step is EAP exactly
        scores = {1: eap}
        for s in steps:
            if s == 1:
                continue
            scores[s] = method_edges(runs, mode, steps=s)
            out[mode][str(s)] = agreement(exact, scores[s], v)
        if mode == "eap-ig-inputs":
            at_corrupted = corrupted_point_scores(model, task)
            out[REFERENCE] = {
                str(s): agreement(exact, reference_code_scores(scores[s], eap, at_corrupted, s), v)
                for s in steps
            }
        last, prev = steps[-1], steps[-2]
        out[mode]["why"] = {
            # the gradient at one point of the path: alpha = 1 is EAP; 2 S_2 - S_1 = g(1/2)
            "point_1": out["eap"]["spearman"],
            "point_half": _rho(exact, 2 * scores[2] - eap, v) if 2 in scores else float("nan"),
            "top_eap": _rho(exact, eap, top),
            "top_ig": _rho(exact, scores[last], top),
            "rest_eap": _rho(exact, eap, rest),
            "rest_ig": _rho(exact, scores[last], rest),
            "converged": _rho(scores[prev], scores[last], v),
        }
    return out


def _rho(a: Tensor, b: Tensor, where: Tensor) -> float:
    return agreement(a, b, where)["spearman"]


def _stats(values: list[float]) -> dict[str, float]:
    v = np.array([x for x in values if x is not None and np.isfinite(x)], dtype=np.float64)
    if not len(v):
        return {"mean": float("nan"), "std": float("nan"), "min": float("nan"), "max": float("nan")}
    return {
        "mean": float(v.mean()),
        "std": float(v.std(ddof=1)) if len(v) > 1 else 0.0,
        "min": float(v.min()),
        "max": float(v.max()),
        "n": len(v),
    }


def _cell(s: dict[str, float]) -> str:
    if not np.isfinite(s["mean"]):
        return "n/a"
    return f"{s['mean']:.3f} ± {s['std']:.3f}"


def _summarise(runs: list[dict[str, Any]], steps: tuple[int, ...]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for mode in (*IG_MODES, REFERENCE):
        out[mode] = {}
        for s in steps:
            per = {}
            for key in ("spearman", "top_k"):
                vals = [r[mode][str(s)][key] for r in runs]
                base = [r["eap"][key] for r in runs]
                per[key] = _stats(vals)
                per[key + "_change_from_1"] = _stats([v - b for v, b in zip(vals, base)])
            out[mode][str(s)] = per
        if mode != REFERENCE:
            out[mode]["why"] = {
                key: _stats([r[mode]["why"][key] for r in runs]) for key in runs[0][mode]["why"]
            }
    return out


def _cases(quick: bool, seed: int) -> list[tuple[str, Callable[[int], tuple[Any, Any]]]]:
    import circuitfind as cf

    n_prompts = 16 if quick else 32

    def family_case(family: str) -> Callable[[int], tuple[Any, Any]]:
        def make(i: int) -> tuple[Any, Any]:
            model = cf.load(random_family_model(family, seed + i))
            return model, minimal_pairs(n_prompts, 8, seed + i)

        return make

    def zoo_case(source: str, task_name: str) -> Callable[[int], tuple[Any, Any]]:
        cache: dict[str, Any] = {}

        def make(i: int) -> tuple[Any, Any]:
            if "model" not in cache:
                cache["model"] = cf.load(source)
            model = cache["model"]
            return model, cf.get_task(task_name, model, n=n_prompts, seed=seed + i)

        return make

    cases = [(f"random {f}", family_case(f)) for f in FAMILIES]
    cases += [(source, zoo_case(source, name)) for source, name in ZOO]
    return cases


def run(out_dir: Path, *, quick: bool, seed: int) -> dict[str, Any]:
    """Write ``eap_ig_agreement.md``/``.json`` under ``out_dir``."""
    steps = QUICK_STEPS if quick else FULL_STEPS
    n_sets = 3 if quick else 5
    n_prompts = 16 if quick else 32
    report = Report(
        "eap_ig_agreement", "EAP and EAP-IG against exact patching, by IG steps", stamp(seed, quick)
    )
    report.add(
        "Rank agreement with exact patching over every edge (resample ablation, each task's "
        f"own metric), {n_prompts} prompts a prompt set, {n_sets} prompt sets per model "
        f"(seeds {seed}..{seed + n_sets - 1}; a random-weight model is redrawn with each seed). "
        "Spearman's rho over all edges, and top-k overlap (k = "
        f"{TOP_PCT:g}% of the edges by |score|); cells are mean ± standard deviation over the "
        "prompt sets. Steps = 1 is EAP (EAP-IG with one step evaluates the gradient at the "
        "clean run only; tested identity). Δ = the change from one step, paired per prompt set "
        "(mean ± sd); [min, max] over the sets in the JSON. Random-weight models: one per "
        f"family, matrices N(0, {WEIGHT_SCALE}²), random 8-token prompts whose corrupted twin "
        f"resamples {N_SWAPPED} tokens, logit difference.",
        "",
    )
    if quick:
        report.add(
            f"**--quick**: {n_prompts} prompts (full: 32), {n_sets} prompt sets (full: 5), "
            f"steps {', '.join(map(str, QUICK_STEPS))} (full: "
            f"{', '.join(map(str, FULL_STEPS))}).",
            "",
        )
    data: dict[str, Any] = {}
    summary: dict[str, Any] = {}
    for name, make in _cases(quick, seed):
        runs, failures = [], []
        for i in range(n_sets):

            def go(i: int = i, make: Callable[[int], tuple[Any, Any]] = make) -> dict[str, Any]:
                model, task = make(i)
                return _one(model, task, steps)

            outcome = timed(go, what=f"{name}/{i}")
            if outcome.ok:
                runs.append({**outcome.value, "seed": seed + i, "seconds": outcome.seconds})
            else:
                failures.append({"seed": seed + i, **outcome.to_dict()})
        entry: dict[str, Any] = {"runs": runs, "failures": failures}
        if runs:
            entry["summary"] = _summarise(runs, steps)
        data[name] = entry
        if runs:
            summary[name] = {
                mode: {s: entry["summary"][mode][str(s)]["spearman"]["mean"] for s in steps}
                for mode in IG_MODES
            }
    report.data["cases"] = data
    report.data["steps"] = list(steps)
    _tables(report, data, steps, n_sets)
    files = report.write(out_dir)
    return {"files": files, "summary": summary}


def _tables(report: Report, data: dict[str, Any], steps: tuple[int, ...], n_sets: int) -> None:
    last = steps[-1]
    for key, title in (("spearman", "Spearman's rho"), ("top_k", f"top-{TOP_PCT:g}% overlap")):
        for mode in (*IG_MODES, REFERENCE):
            rows = []
            for name, entry in data.items():
                if not entry["runs"]:
                    fail = entry["failures"][0]["error"] if entry["failures"] else "no runs"
                    rows.append([name, *["n/a"] * (len(steps) + 1), f"FAILED: {fail}"])
                    continue
                summ = entry["summary"][mode]
                n_edges = entry["runs"][0]["n_edges"]
                status = "ok" if not entry["failures"] else f"{len(entry['failures'])} failed"
                rows.append(
                    [
                        f"{name} ({n_edges} edges)",
                        *[_cell(summ[str(s)][key]) for s in steps],
                        _cell(summ[str(last)][key + "_change_from_1"]),
                        status,
                    ]
                )
            note = (
                "(steps = 1 is EAP)"
                if mode != REFERENCE
                else "(alpha = k/steps, k = 0..steps-1: steps = 1 is the gradient at the "
                "corrupted run; Δ is the change from EAP)"
            )
            report.add(
                f"## {title}: exact vs {mode} {note}",
                "",
                *md_table(
                    ["model", *[f"steps {s}" for s in steps], f"Δ {last} − 1", "status"], rows
                ),
            )
    prev = steps[-2]
    for mode in IG_MODES:
        rows = []
        for name, entry in data.items():
            if not entry["runs"]:
                continue
            w = entry["summary"][mode]["why"]
            rows.append(
                [
                    name,
                    _cell(w["point_1"]),
                    _cell(w["point_half"]),
                    _cell(w["top_eap"]),
                    _cell(w["top_ig"]),
                    _cell(w["rest_eap"]),
                    _cell(w["rest_ig"]),
                    _cell(w["converged"]),
                ]
            )
        report.add(
            f"## Where the agreement goes: {mode} (Spearman's rho with exact, mean ± sd)",
            "",
            "g(1): EAP (the gradient at the clean run); g(1/2): the gradient at the middle of "
            "the path alone (2 S_2 - S_1, S_k the k-step score). top / rest: rho over the "
            f"{TOP_PCT:g}% edges with the largest |exact| score / over the others, for EAP and "
            f"for {last} steps. converged: rho between the {prev}- and {last}-step scores.",
            "",
            *md_table(
                [
                    "model",
                    "g(1) = EAP",
                    "g(1/2)",
                    "top: EAP",
                    f"top: {last} steps",
                    "rest: EAP",
                    f"rest: {last} steps",
                    "converged",
                ],
                rows,
            ),
        )


def main(argv: list[str] | None = None) -> int:
    """``python -m circuitfind.bench.agreement [--quick] [--seed N] [--out DIR]``."""
    import argparse
    import shlex
    import sys

    from circuitfind.bench.common import set_command

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer prompts, sets and steps")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=Path("reports"))
    parser.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    given = sys.argv[1:] if argv is None else argv
    set_command(shlex.join(["python", "-m", "circuitfind.bench.agreement", *given]))
    run(args.out, quick=args.quick, seed=args.seed)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
