"""The speed suite against its peers: auto-circuit (run in its own virtual environment, see
``benchmarks/autocircuit/``) on the same weights and prompts as ours: its EAP, EAP-IG, ACDC and
exact patching against ours, time ratio and Spearman agreement of the edge scores."""

from __future__ import annotations

import json
import os
import resource
import shutil
import signal
import subprocess
import tempfile
import time
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from circuitfind.bench.common import time_it
from circuitfind.bench.speed.cases import Case, Shape, SpeedConfig, random_case
from circuitfind.bench.speed.measure import exact_sample_rate, hf_baseline

__all__ = [
    "against_autocircuit",
    "autocircuit_dir",
    "autocircuit_edge_name",
    "default_venv",
    "ensure_venv",
    "run_autocircuit",
    "spearman",
    "to_autocircuit_edge_name",
]


def _repo_root() -> Path:
    return Path(__file__).resolve().parents[3]


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


def to_autocircuit_edge_name(name: str) -> str:
    """circuitfind's edge name in auto-circuit's convention (the inverse of
    :func:`autocircuit_edge_name`): ``input->a1.h2<q>`` -> ``Resid Start->A1.2.Q``."""
    src, dst = name.split("->")

    def node(x: str) -> str:
        if x == "input":
            return "Resid Start"
        if x == "logits":
            return "Resid End"
        if x.startswith("m"):
            return f"MLP {int(x[1:])}"
        if x.startswith("a"):
            head, _, qkv = x.partition("<")
            layer, h = head[1:].split(".h")
            return f"A{int(layer)}.{int(h)}" + (f".{qkv.rstrip('>').upper()}" if qkv else "")
        raise ValueError(f"unknown circuitfind node {x!r}")

    return f"{node(src)}->{node(dst)}"


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


def run_autocircuit(python: Path, work: Path, timeout_s: float) -> tuple[dict | None, str]:
    """Run ``run_autocircuit.py`` on ``work`` (its ``request.json`` and exported models) in the
    auto-circuit venv: (its ``result.json`` with ``peak_rss_gb`` added, "") or (None, why)."""
    env = {**os.environ, "TQDM_DISABLE": "1", "HF_HUB_OFFLINE": "1"}
    env.pop("PYTHONPATH", None)
    try:
        proc = subprocess.run(
            [str(python), str(autocircuit_dir() / "run_autocircuit.py"), str(work)],
            capture_output=True,
            text=True,
            timeout=timeout_s,
            env=env,
        )
    except subprocess.TimeoutExpired:
        return None, "auto-circuit run timed out"
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
        return None, f"auto-circuit run failed ({why}): {detail}"
    theirs = json.loads((work / "result.json").read_text())
    # the largest finished child so far: the auto-circuit run (KiB on Linux)
    theirs["peak_rss_gb"] = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 2**20
    return theirs, ""


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
    from circuitfind.bench.speed.rules import prepared_runs
    from circuitfind.methods import method_spec

    def method(case: Any, name: str, **options: Any) -> Any:
        return method_spec(name).function()(prepared_runs(case), **options)

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
        theirs, why = run_autocircuit(python, work, cfg.autocircuit_timeout_s)
        if theirs is None:
            return {"available": False, "reason": why}
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
        options = {} if mode == "eap" else {"steps": cfg.ig_steps}
        sc = method(big, mode, **options).edges
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
    if main is not None and "acdc" in main["methods"]:
        # ACDC tries one edge per masked run: theirs a patched forward of the whole model (the
        # single-edge runs above), ours a masked run from the receiver's layer.
        out["rows"].append(
            _row(
                "ACDC, per edge tried (GPT-2-small size, estimated)",
                cfg.autocircuit_shape,
                main["methods"]["acdc"]["seconds"] / big.graph.n_edges,
                tb["exact"]["per_edge_s"],
                None,
                note="a full ACDC run at this size takes hours for both: ours is "
                f"{main['methods']['acdc']['how']}, divided by the edge count; theirs is one "
                "patched forward of their model (median of the single-edge runs), the pass "
                "their ACDC makes per edge tried",
            )
        )
    # The small model: every edge, exact and ACDC, and EAP.
    ts = theirs["models"]["small"]
    ex_t = time_it(lambda: method(small, "exact"), 1, warmup=False)
    ex_ours = _named(small, method(small, "exact").edges)
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
    kept = method(small, "acdc", tau=tau).kept
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
