"""Speed suite: every scoring method against the bare Hugging Face forward/backward, in one run.

    python -m circuitfind.bench.speed [--quick] [--out reports/] [--seed 0] [--no-autocircuit]

What it measures, all in the same process and back to back:

- per method (exact, acdc, eap, eap-ig-inputs, eap-ig-activations, node), wall time on a
  GPT-2-small-size model with random weights (32,491 edges; 32 prompts x 16 tokens) and on the
  zoo models, as a ratio to the HF model's forward (F) and forward + backward (F + B) on the same
  batch; issue 4's targets are checked against those ratios;
- scaling: time against the number of prompts and against graph size (layers x heads);
- auto-circuit (run in its own virtual environment, see ``benchmarks/autocircuit/``) on the same
  weights and prompts: its EAP, EAP-IG and exact patching against ours, time ratio and Spearman
  agreement of the edge scores.

Methods whose full run would take longer than ``max_full_s`` (exact patching and ACDC on the
GPT-2-small graph take hours on a CPU) are timed on a stratified sample of their patched passes
and extrapolated by edge count; the report marks every such number "extrapolated". Every time is
the median of ``repeat`` runs: the machines this runs on are shared and noisy.
"""

from __future__ import annotations

import argparse
import functools
import json
import logging
import os
import platform
import resource
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from circuitfind.bench.common import cpu_name

__all__ = ["FULL", "QUICK", "Shape", "SpeedConfig", "autocircuit_edge_name", "main", "run"]

logger = logging.getLogger(__name__)

METHOD_NAMES = ("exact", "acdc", "eap", "eap-ig-inputs", "eap-ig-activations", "node")


@dataclass(frozen=True)
class Shape:
    """A GPT-2-family shape: layers x heads, model width (d_head = d_model / heads)."""

    layers: int
    heads: int
    d_model: int

    @property
    def label(self) -> str:
        return f"{self.layers}x{self.heads} d{self.d_model}"


GPT2_SMALL = Shape(12, 12, 768)


@dataclass(frozen=True)
class SpeedConfig:
    """What the speed suite runs. ``QUICK`` and ``FULL`` are the two shipped settings."""

    shape: Shape = GPT2_SMALL
    prompts: int = 32
    tokens: int = 16
    repeat: int = 3
    ig_steps: int = 5
    methods: tuple[str, ...] = METHOD_NAMES
    # Exact / ACDC / node run for real when their estimated time is below this; above it, they
    # are extrapolated from a stratified sample of their passes.
    max_full_s: float = 300.0
    exact_receivers_per_layer: int = 2
    exact_sample_senders: int = 8  # senders per sampled receiver (in the engine's passes)
    max_tokens_per_pass: int | None = None  # None: the engine's default (tokens_per_pass)
    scaling_shape: Shape = GPT2_SMALL
    scaling_prompts: tuple[int, ...] = (8, 16, 32, 64)
    scaling_shapes: tuple[Shape, ...] = (
        Shape(2, 4, 256),
        Shape(4, 8, 512),
        Shape(8, 12, 768),
        Shape(12, 12, 768),
    )
    scaling_repeat: int = 1
    zoo: tuple[str, ...] = ("induction-2l", "ioi", "greater-than")
    zoo_prompts: int = 32
    autocircuit: bool = True
    build_venv: bool = True
    autocircuit_venv: Path | None = (
        None  # default: $CIRCUITFIND_AUTOCIRCUIT_VENV or .venv-autocircuit
    )
    autocircuit_shape: Shape = GPT2_SMALL  # EAP / EAP-IG / per-edge exact timing
    autocircuit_small_shape: Shape = Shape(2, 4, 256)  # ACDC and exact, run over every edge
    autocircuit_exact_edges: int = 6  # sampled edges for auto-circuit's per-edge exact time
    autocircuit_acdc_tau: float = 1e-3
    autocircuit_timeout_s: float = 3600.0


FULL = SpeedConfig()
QUICK = SpeedConfig(
    repeat=1,
    max_full_s=60.0,
    exact_receivers_per_layer=1,
    exact_sample_senders=4,
    scaling_shape=Shape(4, 4, 256),
    scaling_prompts=(8, 16, 32, 64),
    scaling_shapes=(Shape(2, 4, 256), Shape(4, 4, 256), Shape(4, 8, 512), Shape(6, 8, 512)),
    zoo=("induction-2l",),
    build_venv=False,
    autocircuit_shape=Shape(4, 4, 256),
    autocircuit_exact_edges=3,
)


# ---------------------------------------------------------------------------- timing
@dataclass
class Timing:
    """Wall times of repeated runs; ``seconds`` is their median."""

    runs: list[float] = field(default_factory=list)

    @property
    def seconds(self) -> float:
        return statistics.median(self.runs)


def _sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def time_it(fn: Callable[[], Any], repeat: int, warmup: bool = True) -> Timing:
    """Median-of-``repeat`` wall time of ``fn`` (after one untimed warm-up call)."""
    if warmup:
        fn()
    t = Timing()
    for _ in range(max(1, repeat)):
        _sync()
        start = time.perf_counter()
        fn()
        _sync()
        t.runs.append(time.perf_counter() - start)
    return t


# ---------------------------------------------------------------------------- models, tasks
def random_gpt2(shape: Shape, seed: int, device: str = "cpu") -> Any:
    """A GPT-2-family HF model of ``shape`` with random weights, eager attention, eval mode."""
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(seed)
    cfg = GPT2Config(
        n_layer=shape.layers,
        n_head=shape.heads,
        n_embd=shape.d_model,
    )
    hf = GPT2LMHeadModel(cfg).eval().to(device)
    hf.config._attn_implementation = "eager"
    return hf


def random_task(vocab: int, n: int, tokens: int, seed: int) -> Any:
    """n random clean/corrupted prompt pairs of ``tokens`` tokens, logit-difference metric."""
    from circuitfind.tasks import Task

    g = torch.Generator().manual_seed(seed)
    return Task.from_tokens(
        torch.randint(0, vocab, (n, tokens), generator=g),
        torch.randint(0, vocab, (n, tokens), generator=g),
        answer=torch.randint(0, vocab, (n,), generator=g),
        wrong=torch.randint(0, vocab, (n,), generator=g),
        name="random",
    )


@dataclass
class Case:
    """One model + task to time: the HF model (the baseline) and circuitfind's view of it."""

    name: str
    hf: Any
    model: Any
    graph: Any
    task: Any

    @property
    def batch_tokens(self) -> tuple[int, int]:
        return tuple(self.task.clean.shape)  # type: ignore[return-value]


def _case(name: str, hf: Any, task: Any) -> Case:
    import circuitfind as cf

    model = cf.load(hf)
    return Case(name, hf, model, cf.Graph.from_model(model), task)


def random_case(shape: Shape, n: int, tokens: int, seed: int) -> Case:
    hf = random_gpt2(shape, seed)
    return _case(
        f"random GPT-2 {shape.label}", hf, random_task(hf.config.vocab_size, n, tokens, seed)
    )


def zoo_case(name: str, n: int, seed: int) -> Case:
    import circuitfind as cf
    from circuitfind import zoo

    card = zoo.card(name)
    model = cf.load(f"zoo:{name}")
    task_name = card.get("task", name if name != "induction-2l" else "induction")
    task = cf.get_task(task_name, model, n=n, seed=seed)
    from transformers import AutoModelForCausalLM

    hf = AutoModelForCausalLM.from_pretrained(zoo.resolve(name), attn_implementation="eager")
    hf.eval()
    return Case(f"zoo:{name}", hf, model, cf.Graph.from_model(model), task)


# ---------------------------------------------------------------------------- baselines
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


# ---------------------------------------------------------------------------- our methods
def _runs(case: Case, task: Any = None) -> Any:
    """Fresh prepared runs of the case (resample ablation, one batch): timing a method from
    them includes its share of the ablated (corrupted) pass."""
    from circuitfind.runs import PreparedRuns

    task = case.task if task is None else task
    return PreparedRuns(case.model, task, "resample", batch_size=len(task), graph=case.graph)


def _method(case: Case, name: str, **options: Any) -> Any:
    """Run method ``name`` (a row of the method table) on fresh prepared runs of ``case``."""
    from circuitfind.methods import method_spec

    return method_spec(name).function()(_runs(case), **options)


def _eap(case: Case, mode: Any, steps: int) -> Callable[[], Tensor]:
    options = {} if mode == "eap" else {"steps": steps}

    def go() -> Tensor:
        return _method(case, mode, **options).edges  # type: ignore[no-any-return]

    return go


def exact_sample_rate(case: Case, cfg: SpeedConfig, seed: int) -> tuple[float, int, int]:
    """Exact patching of every edge, estimated: (seconds, sampled edges, sampled receivers).

    A stratified sample of receivers (``exact_receivers_per_layer`` per layer, split between
    attention and MLP receivers, plus the logits) is run through the same patched pass that
    ``exact_scores`` uses, one chunk of senders each; every receiver's edges are then costed at
    the per-edge rate of a sampled receiver of its layer and kind.
    """
    from circuitfind.methods.exact import _patched_logits, tokens_per_pass

    model, graph, task = case.model, case.graph, case.task
    prep = _runs(case).batches[0]
    batch = prep.batch
    b, p = batch.clean.shape
    # the passes exact_scores makes: as many senders per pass as its token budget allows
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
    ev = _runs(case).evaluator(metric)
    mask = case.graph.valid.clone().to(torch.float32)
    L = case.model.cfg.n_layers
    return {
        start: time_it(functools.partial(ev, mask, start_layer=start), repeat).seconds
        for start in range(L + 1)
    }


def acdc_estimate(case: Case, per_start: dict[int, float]) -> float:
    """ACDC's time if it tries every edge once (an upper bound: it skips dead nodes' edges)."""
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


def time_methods(case: Case, cfg: SpeedConfig, seed: int) -> dict[str, dict[str, Any]]:
    """Wall time of every method in ``cfg.methods`` on ``case``: {method: {seconds, how, ...}}."""
    out: dict[str, dict[str, Any]] = {}
    for mode in ("eap", "eap-ig-inputs", "eap-ig-activations"):
        if mode in cfg.methods:
            steps = 1 if mode == "eap" else cfg.ig_steps
            # EAP-IG runs EAP's code path, already warm: no extra warm-up run for it.
            reps = cfg.repeat if mode == "eap" else max(1, cfg.repeat - 2)
            t = time_it(_eap(case, mode, steps), reps, warmup=mode == "eap")
            out[mode] = {"seconds": t.seconds, "runs": t.runs, "how": "measured", "steps": steps}

    need_masked = {"acdc", "node"} & set(cfg.methods)
    per_start: dict[int, float] = {}
    if need_masked:
        per_start = masked_pass_times(case, "kl", max(1, cfg.repeat - 2))

    if "exact" in cfg.methods:
        est, edges, receivers = exact_sample_rate(case, cfg, seed)
        if est <= cfg.max_full_s:
            t = time_it(
                lambda: _method(case, "exact", max_tokens_per_pass=cfg.max_tokens_per_pass),
                1,
                warmup=False,
            )
            out["exact"] = {"seconds": t.seconds, "runs": t.runs, "how": "measured"}
        else:
            out["exact"] = {
                "seconds": est,
                "how": f"extrapolated from {edges} edges into {receivers} sampled receivers",
            }
    if "acdc" in cfg.methods:
        est = acdc_estimate(case, per_start)
        if est <= cfg.max_full_s:
            t = time_it(
                lambda: _method(case, "acdc", tau=0.01),
                1,
                warmup=False,
            )
            out["acdc"] = {"seconds": t.seconds, "runs": t.runs, "how": "measured (tau 0.01, KL)"}
        else:
            out["acdc"] = {
                "seconds": est,
                "how": "extrapolated: one masked run per edge (upper bound), timed per start layer",
            }
    if "node" in cfg.methods:
        est = node_estimate(case, per_start)
        if est <= cfg.max_full_s:
            t = time_it(
                lambda: _method(case, "node"),
                1,
                warmup=False,
            )
            out["node"] = {"seconds": t.seconds, "runs": t.runs, "how": "measured"}
        else:
            out["node"] = {
                "seconds": est,
                "how": "extrapolated: one masked run per node, timed per start layer",
            }
    if per_start:
        out["_masked_pass_s_by_start_layer"] = {"seconds": 0.0, "how": "", "by_layer": per_start}
    return out


def _targets(methods: dict[str, dict[str, Any]], F: float, FB: float, n_edges: int) -> None:
    """Add each method's ratio to the HF baseline, and issue 4's targets, in place."""
    B = max(FB - F, 0.0)
    for name, m in methods.items():
        s = m["seconds"]
        m["x_F"] = s / F
        if name == "eap":
            m["ratio"], m["baseline"], m["target"] = s / (2 * F + B), "2F + B", 1.3
        elif name.startswith("eap-ig"):
            k = m.get("steps", 5)
            m["ratio"], m["baseline"] = s / ((k + 1) * F + k * B), f"{k + 1}F + {k}B"
            if name == "eap-ig-inputs":
                m["target"] = 1.3
        elif name == "exact":
            # Speed-up over one full forward per edge (the target is a speed-up >= 4).
            m["speedup_vs_F_per_edge"] = F * n_edges / s
            m["per_edge_s"] = s / n_edges
        elif name == "acdc":
            m["per_edge_s"] = s / n_edges
        if "target" in m:
            m["met"] = m["ratio"] <= m["target"]
        if name == "exact":
            m["met"] = m["speedup_vs_F_per_edge"] >= 4.0


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
    _targets(methods, F, FB, case.graph.n_edges)
    n, T = case.batch_tokens
    return {
        "case": case.name,
        "layers": case.model.cfg.n_layers,
        "heads": case.model.cfg.n_heads,
        "d_model": case.model.cfg.d_model,
        "edges": case.graph.n_edges,
        "prompts": n,
        "tokens": T,
        "hf_F_s": F,
        "hf_FB_s": FB,
        "hf_F_runs": before["F"].runs + after["F"].runs,
        "hf_FB_runs": before["F+B"].runs + after["F+B"].runs,
        "ours_F_s": ours_F.seconds,
        "masked_pass_s_by_start_layer": per_start,
        "methods": methods,
    }


# ---------------------------------------------------------------------------- scaling
def scaling(cfg: SpeedConfig, seed: int) -> dict[str, list[dict[str, Any]]]:
    """Time against the number of prompts (HF F, F + B, EAP) and against graph size (the same
    and exact patching of every edge, estimated as above)."""
    reps = cfg.scaling_repeat
    sub = replace(cfg, repeat=reps, max_full_s=0.0)

    def point(case: Case, with_exact: bool) -> dict[str, Any]:
        base = hf_baseline(case, reps)
        eap = time_it(_eap(case, "eap", 1), reps).seconds
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
        prompts.append(point(_case(f"{cfg.scaling_shape.label} n{n}", hf, task), False))
    sizes = []
    for shape in cfg.scaling_shapes:
        logger.info("scaling: %s", shape.label)
        sizes.append(point(random_case(shape, cfg.prompts, cfg.tokens, seed), True))
    return {"prompts": prompts, "graph_size": sizes}


# ---------------------------------------------------------------------------- auto-circuit
def _repo_root() -> Path:
    return Path(__file__).resolve().parents[2]


def autocircuit_dir() -> Path:
    """``benchmarks/autocircuit/`` of the source checkout (the venv recipe and the runner)."""
    return _repo_root() / "benchmarks" / "autocircuit"


def default_venv() -> Path:
    env = os.environ.get("CIRCUITFIND_AUTOCIRCUIT_VENV")
    return Path(env) if env else _repo_root() / ".venv-autocircuit"


def autocircuit_edge_name(name: str) -> str:
    """auto-circuit's edge name in circuitfind's convention.

    ``Resid Start->A1.2.Q`` -> ``input->a1.h2<q>``; ``A0.3->MLP 1`` -> ``a0.h3->m1``;
    ``MLP 1->Resid End`` -> ``m1->logits``.
    """
    src, dst = name.split("->")

    def node(x: str, dest: bool) -> str:
        x = x.strip()
        if x == "Resid Start":
            return "input"
        if x == "Resid End":
            return "logits"
        if x.startswith("MLP "):
            return f"m{int(x[4:])}"
        if x.startswith("A"):
            parts = x[1:].split(".")
            head = f"a{int(parts[0])}.h{int(parts[1])}"
            if dest and len(parts) == 3:
                return f"{head}<{parts[2].lower()}>"
            return head
        raise ValueError(f"unknown auto-circuit node {x!r}")

    return f"{node(src, False)}->{node(dst, True)}"


def spearman(ours: dict[str, float], theirs: dict[str, float]) -> dict[str, Any]:
    """Spearman correlation over the edges both score (finite values), signed and |score|."""
    from scipy.stats import spearmanr

    common = [e for e in ours if e in theirs and _finite(ours[e]) and _finite(theirs[e])]
    if len(common) < 3:
        return {"edges": len(common), "signed": None, "abs": None}
    a = [ours[e] for e in common]
    b = [theirs[e] for e in common]
    signed = spearmanr(a, b).statistic
    absolute = spearmanr([abs(x) for x in a], [abs(x) for x in b]).statistic
    return {"edges": len(common), "signed": float(signed), "abs": float(absolute)}


def _finite(x: float) -> bool:
    return x == x and abs(x) != float("inf")


def ensure_venv(cfg: SpeedConfig) -> tuple[Path | None, str]:
    """The auto-circuit venv's python, building the venv when ``cfg.build_venv``; else the reason
    it is unavailable."""
    venv = cfg.autocircuit_venv or default_venv()
    python = venv / "bin" / "python"
    runner = autocircuit_dir() / "run_autocircuit.py"
    if not runner.is_file():
        return None, f"the runner {runner} is missing (not a source checkout)"

    def ready() -> bool:
        if not python.is_file():
            return False
        probe = subprocess.run(
            [str(python), "-c", "import auto_circuit, transformer_lens"],
            capture_output=True,
            timeout=300,
        )
        return probe.returncode == 0

    if ready():
        return python, ""
    if not cfg.build_venv:
        return None, (
            f"no auto-circuit environment at {venv} (build it with "
            "benchmarks/autocircuit/setup_venv.sh, or run the full suite)"
        )
    setup = autocircuit_dir() / "setup_venv.sh"
    try:
        proc = subprocess.run(
            ["bash", str(setup), str(venv)], capture_output=True, text=True, timeout=3600
        )
    except (OSError, subprocess.TimeoutExpired) as e:
        return None, f"building the auto-circuit environment failed: {e}"
    if proc.returncode != 0 or not ready():
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-3:]
        return None, "building the auto-circuit environment failed: " + " | ".join(tail)
    return python, ""


def _export(case: Case, d: Path) -> None:
    from safetensors.torch import save_file

    d.mkdir(parents=True, exist_ok=True)
    sd = {
        k: v.detach().cpu().contiguous()
        for k, v in case.hf.state_dict().items()
        if k != "lm_head.weight"  # tied to the embedding
    }
    save_file(sd, str(d / "model.safetensors"))
    (d / "config.json").write_text(json.dumps(case.hf.config.to_diff_dict()))
    t = case.task
    save_file(
        {
            "clean": t.clean.contiguous(),
            "corrupted": t.corrupted.contiguous(),
            "answer": t.answer.reshape(len(t), -1)[:, 0].contiguous(),
            "wrong": t.wrong.reshape(len(t), -1)[:, 0].contiguous(),
        },
        str(d / "tokens.safetensors"),
    )


def _named(case: Case, scores: Tensor) -> dict[str, float]:
    g = case.graph
    return {
        g.edge_name(s, r): float(scores[s, r])
        for r in range(g.n_receivers)
        for s in range(int(g.n_upstream[r]))
    }


def against_autocircuit(cfg: SpeedConfig, seed: int, ours_main: dict[str, Any] | None) -> dict:
    """auto-circuit's EAP, EAP-IG, ACDC and per-edge exact patching against ours, same weights
    and prompts: time ratios and Spearman agreement over edges."""
    python, why = ensure_venv(cfg)
    if python is None:
        return {"available": False, "reason": why}
    big = random_case(cfg.autocircuit_shape, cfg.prompts, cfg.tokens, seed)
    small = random_case(cfg.autocircuit_small_shape, cfg.prompts, cfg.tokens, seed)
    work = Path(tempfile.mkdtemp(prefix="circuitfind-autocircuit-"))
    try:
        _export(big, work / "big")
        _export(small, work / "small")
        request = {
            "threads": torch.get_num_threads(),
            "models": {
                "big": {
                    "methods": ["eap", "eap-ig", "exact"],
                    "repeat": cfg.repeat,
                    "ig_steps": cfg.ig_steps,
                    "exact_edges": cfg.autocircuit_exact_edges,
                },
                "small": {
                    "methods": ["eap", "acdc", "exact"],
                    "repeat": cfg.repeat,
                    "acdc_tau": cfg.autocircuit_acdc_tau,
                    "exact_edges": None,
                },
            },
        }
        (work / "request.json").write_text(json.dumps(request))
        env = {**os.environ, "TQDM_DISABLE": "1", "HF_HUB_OFFLINE": "1"}
        env.pop("PYTHONPATH", None)
        try:
            proc = subprocess.run(
                [str(python), str(autocircuit_dir() / "run_autocircuit.py"), str(work)],
                capture_output=True,
                text=True,
                timeout=cfg.autocircuit_timeout_s,
                env=env,
            )
        except subprocess.TimeoutExpired:
            return {"available": False, "reason": "auto-circuit run timed out"}
        if proc.returncode != 0 or not (work / "result.json").is_file():
            tail = proc.stderr.strip().splitlines()[-5:]
            if proc.returncode < 0:  # killed by a signal; SIGKILL is usually the OOM killer
                sig = signal.Signals(-proc.returncode).name
                why = f"killed by {sig}" + (
                    " (out of memory? run the suite with nothing else on the machine)"
                    if sig == "SIGKILL"
                    else ""
                )
            else:
                why = f"exit code {proc.returncode}"
            detail = " | ".join(tail) or "no error output"
            return {"available": False, "reason": f"auto-circuit run failed ({why}): {detail}"}
        theirs = json.loads((work / "result.json").read_text())
        # the largest finished child so far: the auto-circuit run (KiB on Linux)
        theirs["peak_rss_gb"] = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 2**20
    finally:
        shutil.rmtree(work, ignore_errors=True)

    out: dict[str, Any] = {
        "available": True,
        "versions": theirs["versions"],
        "peak_rss_gb": theirs["peak_rss_gb"],
        "rows": [],
    }

    def named_theirs(scores: dict[str, float], flip: bool) -> dict[str, float]:
        # auto-circuit's mask gradients are of -(logit difference): flip to our sign.
        return {autocircuit_edge_name(k): (-v if flip else v) for k, v in scores.items()}

    # The big model: EAP, EAP-IG, per-edge exact.
    tb = theirs["models"]["big"]
    base = hf_baseline(big, cfg.repeat)
    n = len(big.task)
    main = ours_main if ours_main and ours_main.get("edges") == big.graph.n_edges else None

    def scored(mode: Any) -> tuple[dict[str, float], float]:
        """Our scores in ``mode`` and the time of the run that made them."""
        t0 = time.perf_counter()
        sc = _method(big, mode, **({} if mode == "eap" else {"steps": cfg.ig_steps})).edges
        return _named(big, sc), time.perf_counter() - t0

    # Same shape, seed and prompts as the per-method case: its medians are this model's times.
    eap_ours, eap_s = scored("eap")
    if main is not None:
        eap_s = main["methods"]["eap"]["seconds"]
    else:
        eap_s = time_it(lambda: scored("eap"), cfg.repeat).seconds
    ig_ours, ig_s = scored("eap-ig-activations")
    if main is not None and "eap-ig-activations" in main["methods"]:
        ig_s = main["methods"]["eap-ig-activations"]["seconds"]
    if main is not None and "exact" in main["methods"]:
        exact_est = main["methods"]["exact"]["seconds"]
    else:
        exact_est = exact_sample_rate(big, replace(cfg, max_full_s=0.0), seed)[0]
    out["big"] = {
        "shape": asdict(cfg.autocircuit_shape),
        "edges": big.graph.n_edges,
        "their_edges": tb["n_edges"],
        "prompts": n,
        "tokens": cfg.tokens,
        "hf_F_s": base["F"].seconds,
        "hf_FB_s": base["F+B"].seconds,
        "tl_vs_hf_max_abs_logit_diff": tb["tl_vs_hf_max_abs_logit_diff"],
        "their_patchable_forward_s": tb["patchable_forward_s"],
    }
    out["rows"].append(
        _row(
            "EAP",
            cfg.autocircuit_shape,
            eap_s,
            tb["eap"]["seconds"],
            spearman(eap_ours, named_theirs(tb["eap"]["scores"], True)),
        )
    )
    out["rows"].append(
        _row(
            f"EAP-IG ({cfg.ig_steps} steps; ours: activations)",
            cfg.autocircuit_shape,
            ig_s,
            tb["eap-ig"]["seconds"],
            spearman(ig_ours, named_theirs(tb["eap-ig"]["scores"], True)),
        )
    )
    ours_per_edge = exact_est / big.graph.n_edges
    out["rows"].append(
        _row(
            "exact patching, per edge",
            cfg.autocircuit_shape,
            ours_per_edge,
            tb["exact"]["per_edge_s"],
            None,
            note=f"theirs: median of {tb['exact']['edges_timed']} single-edge runs; ours: all "
            "edges estimated from a stratified sample, divided by the edge count",
        )
    )
    # The small model: every edge, exact and ACDC, and EAP.
    ts = theirs["models"]["small"]
    ex_t = time_it(lambda: _method(small, "exact"), 1, warmup=False)
    ex_ours = _named(small, _method(small, "exact").edges)
    their_exact = ts["exact"]["scores"]
    out["rows"].append(
        _row(
            "exact patching, every edge",
            cfg.autocircuit_small_shape,
            ex_t.seconds,
            ts["exact"]["per_edge_s"] * len(their_exact),
            spearman(ex_ours, named_theirs(their_exact, False)),
            note="theirs: one patched forward per edge (median x edges)",
        )
    )
    tau = cfg.autocircuit_acdc_tau
    acdc_t0 = time.perf_counter()
    kept = _method(small, "acdc", tau=tau).kept
    acdc_s = time.perf_counter() - acdc_t0
    ours_kept = {small.graph.edge_name(int(s), int(r)) for s, r in kept.nonzero()}
    their_kept = {
        autocircuit_edge_name(k) for k, v in ts["acdc"]["scores"].items() if v == float("inf")
    }
    union = ours_kept | their_kept
    out["rows"].append(
        _row(
            f"ACDC (tau {tau:g}, KL)",
            cfg.autocircuit_small_shape,
            acdc_s,
            ts["acdc"]["seconds"],
            None,
            note=f"kept edges: ours {len(ours_kept)}, theirs {len(their_kept)}, Jaccard "
            f"{(len(ours_kept & their_kept) / len(union)) if union else 1.0:.2f}",
        )
    )
    out["small"] = {
        "shape": asdict(cfg.autocircuit_small_shape),
        "edges": small.graph.n_edges,
        "their_edges": ts["n_edges"],
        "tl_vs_hf_max_abs_logit_diff": ts["tl_vs_hf_max_abs_logit_diff"],
    }
    return out


def _row(
    method: str, shape: Shape, ours: float, theirs: float, rho: dict | None, note: str = ""
) -> dict:
    return {
        "method": method,
        "model": shape.label,
        "ours_s": ours,
        "autocircuit_s": theirs,
        "speedup": theirs / ours if ours > 0 else None,
        "spearman": rho,
        "note": note,
    }


# ---------------------------------------------------------------------------- the run
def machine() -> dict[str, Any]:
    """What ran the numbers: CPU/GPU, cores, threads, library versions."""
    import transformers

    from circuitfind import __version__

    return {
        "platform": platform.platform(),
        "cpu": cpu_name(),
        "cores": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "python": platform.python_version(),
        "versions": {
            "circuitfind": __version__,
            "torch": torch.__version__,
            "transformers": transformers.__version__,
        },
        "load_average": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
    }


def run(
    out_dir: Path,
    *,
    quick: bool,
    seed: int,
    config: SpeedConfig | None = None,
    command: str | None = None,
) -> dict:
    """Run the speed suite and write ``speed.md``, ``speed.json`` and ``speed_*.png`` under
    ``out_dir``. Returns the results (the JSON's content)."""
    cfg = config or (QUICK if quick else FULL)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    result: dict[str, Any] = {
        "suite": "speed",
        "command": command
        or ("circuitfind benchmark --suite speed" + (" --quick" if quick else "")),
        "seed": seed,
        "quick": quick,
        "config": json.loads(json.dumps(asdict(cfg), default=str)),
        "machine": machine(),
        "cases": [],
    }
    logger.info("speed: %s", cfg.shape.label)
    result["cases"].append(
        measure_case(random_case(cfg.shape, cfg.prompts, cfg.tokens, seed), cfg, seed)
    )
    for name in cfg.zoo:
        try:
            case = zoo_case(name, cfg.zoo_prompts, seed)
        except Exception as e:  # a zoo model that cannot load is reported, not fatal
            result["cases"].append({"case": f"zoo:{name}", "error": f"{type(e).__name__}: {e}"})
            continue
        logger.info("speed: zoo:%s", name)
        result["cases"].append(
            measure_case(case, replace(cfg, max_full_s=max(cfg.max_full_s, 600.0)), seed)
        )
    result["scaling"] = scaling(cfg, seed)
    if cfg.autocircuit:
        try:
            result["autocircuit"] = against_autocircuit(cfg, seed, result["cases"][0])
        except Exception as e:  # never fail the suite for the peer's sake
            logger.exception("auto-circuit comparison failed")
            result["autocircuit"] = {"available": False, "reason": f"{type(e).__name__}: {e}"}
    else:
        result["autocircuit"] = {"available": False, "reason": "disabled (--no-autocircuit)"}
    result["wall_s"] = time.perf_counter() - started
    (out_dir / "speed.json").write_text(json.dumps(result, indent=1, default=str))
    plots = write_plots(result, out_dir)
    (out_dir / "speed.md").write_text(render_markdown(result, plots))
    return result


# ---------------------------------------------------------------------------- the report
_TARGET_TEXT = {
    "eap": "<= 1.3 x (2F + B)",
    "eap-ig-inputs": "<= 1.3 x (6F + 5B)",
    "exact": ">= 4 x faster than one F per edge",
}


def _fmt(x: float | None, digits: int = 3) -> str:
    if x is None:
        return "-"
    if abs(x) >= 100:
        return f"{x:,.0f}"
    return f"{x:.{digits}f}"


def _case_table(c: dict[str, Any]) -> list[str]:
    lines = [
        f"### {c['case']}",
        "",
        f"{c['layers']} layers x {c['heads']} heads, d_model {c['d_model']}, {c['edges']:,} edges; "
        f"{c['prompts']} prompts x {c['tokens']} tokens. HF forward F = {_fmt(c['hf_F_s'])} s, "
        f"F + B = {_fmt(c['hf_FB_s'])} s (medians of {len(c['hf_F_runs'])} runs, before and after "
        f"the methods); circuitfind's own forward {_fmt(c['ours_F_s'])} s "
        f"({c['ours_F_s'] / c['hf_F_s']:.2f} x F).",
        "",
        "| method | seconds | x F | ratio to its floor | target | met | how |",
        "| --- | ---: | ---: | --- | --- | --- | --- |",
    ]
    for name in METHOD_NAMES:
        m = c["methods"].get(name)
        if m is None:
            continue
        if name == "exact":
            ratio = f"{m['speedup_vs_F_per_edge']:.2f} x faster than F per edge"
        elif "ratio" in m:
            ratio = f"{m['ratio']:.2f} x ({m['baseline']})"
        elif "per_edge_s" in m:
            ratio = f"{m['per_edge_s']:.4f} s per edge"
        else:
            ratio = ""
        met = {True: "yes", False: "**no**"}.get(m.get("met"), "")
        lines.append(
            f"| {name} | {_fmt(m['seconds'])} | {m['x_F']:.1f} | {ratio} | "
            f"{_TARGET_TEXT.get(name, '')} | {met} | {m['how']} |"
        )
    return [*lines, ""]


def render_markdown(r: dict[str, Any], plots: dict[str, str]) -> str:
    mach = r["machine"]
    v = mach["versions"]
    device = (
        mach["gpu"]
        or f"CPU ({mach['cpu']}, {mach['cores']} cores, {mach['torch_threads']} torch threads)"
    )
    lines = [
        "# Speed: every scoring method against the bare Hugging Face forward/backward",
        "",
        f"Command: `{r['command']}`  ",
        f"Seed: {r['seed']}; {'quick' if r['quick'] else 'full'} suite; "
        f"wall time {r['wall_s']:.0f} s  ",
        f"Machine: {device}; {mach['platform']}; load average at start "
        f"{', '.join(f'{x:.1f}' for x in (mach['load_average'] or []))}  ",
        f"Versions: circuitfind {v['circuitfind']}, torch {v['torch']}, transformers "
        f"{v['transformers']}, Python {mach['python']}",
        "",
        "Every number below comes from that command (the raw results are in `speed.json` next to "
        "this file). The machine is shared and noisy: each time is the median of repeated runs, "
        "and the HF baseline is measured in the same process, before and after the methods, so "
        "the ratios compare like with like. F is one HF forward over the batch, B one backward "
        "(B = (F + B) - F).",
        "",
        "Exact patching and ACDC over a whole GPT-2-small graph take hours on a CPU: where a "
        "method's estimate exceeds the suite's budget, it is timed on a stratified sample of its "
        "patched passes and extrapolated by edge count (the `how` column says which). ACDC's "
        "extrapolation assumes every edge is tried once, an upper bound (ACDC skips the edges "
        "of nodes that no longer feed anything).",
        "",
        "## Per method",
        "",
    ]
    for c in r["cases"]:
        if "error" in c:
            lines += [f"### {c['case']}", "", f"Could not run: {c['error']}", ""]
            continue
        lines += _case_table(c)
    s = r["scaling"]
    lines += [
        "## Scaling",
        "",
        "Time against the number of prompts (random GPT-2 "
        f"{s['prompts'][0]['layers']}x{s['prompts'][0]['heads']} d{s['prompts'][0]['d_model']}, "
        f"{s['prompts'][0]['tokens']} tokens) and against graph size (layers x heads, "
        f"{s['graph_size'][0]['prompts']} prompts). Exact: every edge, estimated as above "
        "(graph size only; its cost is linear in the prompts by construction). "
        "Single runs (no repeats) on a noisy machine: read the trend, not the third digit.",
        "",
    ]
    for key, title in (("prompts", "Prompts"), ("graph_size", "Graph size")):
        if key in plots:
            lines += [f"![{title}]({plots[key]})", ""]
        lines += [
            "| shape | edges | prompts | HF F s | HF F+B s | EAP s | EAP / (2F + B) "
            "| exact, all edges s |",
            "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
        ]
        for p in s[key]:
            lines.append(
                f"| {p['layers']}x{p['heads']} d{p['d_model']} | {p['edges']:,} | {p['prompts']} | "
                f"{_fmt(p['hf_F_s'])} | {_fmt(p['hf_FB_s'])} | {_fmt(p['eap_s'])} | "
                f"{p['eap_vs_2F_plus_B']:.2f} | {_fmt(p['exact_all_edges_s'])} |"
            )
        lines.append("")
    lines += ["## Against auto-circuit", ""]
    ac = r["autocircuit"]
    if not ac.get("available"):
        lines += [f"auto-circuit unavailable: {ac.get('reason')}. Ours alone above.", ""]
    else:
        av = ac["versions"]
        lines += [
            f"auto-circuit {av['auto_circuit']} (TransformerLens {av['transformer_lens']}, "
            f"transformers {av['transformers']}, torch {av['torch']}) in its own virtual "
            "environment (`benchmarks/autocircuit/setup_venv.sh`), on the same random weights "
            "(moved as safetensors) and the same token batches, resample ablation, logit "
            "difference. Its TransformerLens model matches the HF logits to "
            f"{ac['big']['tl_vs_hf_max_abs_logit_diff']:.1e}. Its patchable forward on the big "
            f"model: {_fmt(ac['big']['their_patchable_forward_s'])} s (HF F "
            f"{_fmt(ac['big']['hf_F_s'])} s, F + B {_fmt(ac['big']['hf_FB_s'])} s). "
            + (
                f"Its peak memory: {ac['peak_rss_gb']:.1f} GB (resident). "
                if "peak_rss_gb" in ac
                else ""
            )
            + f"Edge counts: ours "
            f"{ac['big']['edges']:,}, theirs {ac['big']['their_edges']:,}. Spearman is over the "
            "edges both score, signed and on |score| (auto-circuit's gradients are of "
            "-(logit difference); they are sign-flipped). auto-circuit's EAP-IG interpolates "
            "the edge masks over k + 1 points (0..1); ours (activations) over k points.",
            "",
            "| method | model | ours s | auto-circuit s | speed-up | Spearman signed "
            "| Spearman abs | note |",
            "| --- | --- | ---: | ---: | ---: | ---: | ---: | --- |",
        ]
        for row in ac["rows"]:
            rho = row["spearman"] or {}
            lines.append(
                f"| {row['method']} | {row['model']} | {_fmt(row['ours_s'])} | "
                f"{_fmt(row['autocircuit_s'])} | {_fmt(row['speedup'], 1)} x | "
                f"{_fmt(rho.get('signed'))} | {_fmt(rho.get('abs'))} | {row['note']} |"
            )
        lines.append("")
    return "\n".join(lines)


def write_plots(r: dict[str, Any], out_dir: Path) -> dict[str, str]:
    """``speed_prompts.png`` and ``speed_graph_size.png``; {} when matplotlib is missing."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return {}
    out: dict[str, str] = {}
    series = (
        ("hf_F_s", "HF forward (F)"),
        ("hf_FB_s", "HF forward + backward"),
        ("eap_s", "EAP, all edges"),
        ("exact_all_edges_s", "exact, all edges (est.)"),
    )
    for key, xkey, xlabel in (
        ("prompts", "prompts", "prompts (x 16 tokens)"),
        ("graph_size", "edges", "edges (layers x heads)"),
    ):
        points = r["scaling"][key]
        if not points:
            continue
        fig, ax = plt.subplots(figsize=(6, 4))
        xs = [p[xkey] for p in points]
        for skey, label in series:
            ys = [p[skey] for p in points]
            if all(y is not None for y in ys):
                ax.plot(xs, ys, marker="o", label=label)
        if key == "graph_size":
            for p in points:
                ax.annotate(f"{p['layers']}x{p['heads']}", (p["edges"], p["eap_s"]), fontsize=7)
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel(xlabel)
        ax.set_ylabel("seconds (log)")
        ax.set_title(f"Time vs {xlabel.split(' ')[0]}")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=8)
        fig.tight_layout()
        name = f"speed_{key}.png"
        fig.savefig(out_dir / name, dpi=110)
        plt.close(fig)
        out[key] = name
    return out


def main(argv: Sequence[str] | None = None) -> dict:
    """``python -m circuitfind.bench.speed``."""
    ap = argparse.ArgumentParser(
        prog="python -m circuitfind.bench.speed",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    ap.add_argument("--quick", action="store_true", help="the few-minute version")
    ap.add_argument("--out", type=Path, default=Path("reports"), help="output directory")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument(
        "--no-autocircuit", action="store_true", help="skip the auto-circuit comparison"
    )
    ap.add_argument(
        "--build-venv",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="build auto-circuit's environment when missing (default: in the full suite only)",
    )
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(name)s %(message)s")
    logger.setLevel(logging.INFO)
    cfg = QUICK if args.quick else FULL
    if args.no_autocircuit:
        cfg = replace(cfg, autocircuit=False)
    if args.build_venv is not None:
        cfg = replace(cfg, build_venv=args.build_venv)
    argv_list = list(sys.argv[1:] if argv is None else argv)
    command = " ".join(["python -m circuitfind.bench.speed", *argv_list])
    r = run(args.out, quick=args.quick, seed=args.seed, config=cfg, command=command)
    print((Path(args.out) / "speed.md").read_text())  # the CLI's output, not library logging
    return r


if __name__ == "__main__":
    main()
