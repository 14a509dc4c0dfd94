"""The speed suite's second peer: the EAP-IG reference code (``hannamw/EAP-IG``, on
TransformerLens), run in its own virtual environment (``benchmarks/eapig/``) on the same weights
(a random GPT-2 saved with safetensors), prompts and metric (logit difference at the last
position) as ours: scores equal within a stated tolerance for EAP and EAP-IG-inputs, and the
time ratio.

EAP-IG's reference sums the path's points k = 0..steps-1 (alpha = k / steps) where circuitfind
sums k = 1..steps (see ``circuitfind.methods.eap``). The two sums share every interior point, so

    theirs(steps) = ours(steps) + (theirs(1) - ours_eap) / steps

exactly (theirs(1) is the gradient at the corrupted input, ours_eap at the clean one); the suite
checks that identity edge by edge, and reports the plain Spearman agreement too.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch

from circuitfind.bench.common import time_it
from circuitfind.bench.speed.cases import random_case

__all__ = ["TOLERANCE", "against_eapig", "compare_scores", "default_venv", "eapig_dir"]

TOLERANCE = 1e-4
"""Largest |ours - theirs| allowed, relative to the largest |score| of the method (float32 sums
in a different order: TransformerLens's hooks against circuitfind's closed-form probes)."""


def _repo_root() -> Path:
    return Path(__file__).resolve().parents[3]


def eapig_dir() -> Path:
    """``benchmarks/eapig/`` of the source checkout (the venv recipe and the runner)."""
    return _repo_root() / "benchmarks" / "eapig"


def default_venv() -> Path:
    env = os.environ.get("CIRCUITFIND_EAPIG_VENV")
    return Path(env) if env else _repo_root() / ".venv-eapig"


def _python(venv: Path) -> tuple[Path | None, str]:
    python = venv / "bin" / "python"
    if not (eapig_dir() / "run_eapig.py").is_file():
        return None, "benchmarks/eapig/run_eapig.py is missing (not a source checkout)"
    if not python.is_file():
        return None, (
            f"no EAP-IG environment at {venv} (build it with benchmarks/eapig/setup_venv.sh "
            "EAPIG_SOURCE, a checkout of hannamw/EAP-IG; or set CIRCUITFIND_EAPIG_VENV)"
        )
    probe = subprocess.run(
        [str(python), "-c", "import eap.attribute, transformer_lens"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    if probe.returncode != 0:
        tail = " | ".join(probe.stderr.strip().splitlines()[-2:])
        return None, f"the EAP-IG environment at {venv} cannot import eap: {tail}"
    return python, ""


def compare_scores(ours: dict[str, float], theirs: dict[str, float]) -> dict[str, Any]:
    """Edge-by-edge agreement: the largest |ours - theirs| (absolute and relative to the largest
    |score|), whether it is within ``TOLERANCE``, and the edges compared."""
    common = [e for e in ours if e in theirs]
    if not common:
        return {"edges": 0, "max_abs_diff": None, "max_rel_diff": None, "within": False}
    a = torch.tensor([ours[e] for e in common], dtype=torch.float64)
    b = torch.tensor([theirs[e] for e in common], dtype=torch.float64)
    diff = float((a - b).abs().max())
    scale = float(torch.maximum(a.abs().max(), b.abs().max()))
    rel = diff / scale if scale > 0 else 0.0
    return {
        "edges": len(common),
        "ours_only": len(ours) - len(common),
        "theirs_only": len(theirs) - len(common),
        "max_abs_diff": diff,
        "max_rel_diff": rel,
        "within": rel <= TOLERANCE,
        "tolerance": TOLERANCE,
    }


def _named(case: Any, scores: torch.Tensor) -> dict[str, float]:
    g = case.graph
    return {
        g.edge_name(s, r): float(scores[s, r])
        for r in range(g.n_receivers)
        for s in range(int(g.n_upstream[r]))
    }


def _spread(runs: list[float]) -> dict[str, Any]:
    runs = sorted(runs)
    return {"seconds": runs[len(runs) // 2], "min_s": runs[0], "max_s": runs[-1], "runs": runs}


def against_eapig(cfg: Any, seed: int) -> dict[str, Any]:
    """EAP-IG's EAP and EAP-IG-inputs against ours on ``cfg.eapig_shape``: scores and times."""
    from circuitfind.bench.speed.peers import _export, spearman
    from circuitfind.bench.speed.rules import prepared_runs
    from circuitfind.methods import method_spec

    python, why = _python(cfg.eapig_venv or default_venv())
    if python is None:
        return {"available": False, "reason": why}
    steps, repeat = cfg.ig_steps, cfg.repeat
    case = random_case(cfg.eapig_shape, cfg.prompts, cfg.tokens, seed)
    work = Path(tempfile.mkdtemp(prefix="circuitfind-eapig-"))
    try:
        _export(case, work / "model")
        request = {
            "threads": torch.get_num_threads(),
            "repeat": repeat,
            "methods": [
                {"name": "EAP"},
                {"name": "EAP-IG-inputs", "steps": steps},
                {"name": "EAP-IG-inputs", "steps": 1, "repeat": 0},
            ],
        }
        (work / "request.json").write_text(json.dumps(request))
        env = {**os.environ, "TQDM_DISABLE": "1", "HF_HUB_OFFLINE": "1"}
        env.pop("PYTHONPATH", None)
        try:
            proc = subprocess.run(
                [str(python), str(eapig_dir() / "run_eapig.py"), str(work)],
                capture_output=True,
                text=True,
                timeout=cfg.autocircuit_timeout_s,
                env=env,
            )
        except subprocess.TimeoutExpired:
            return {"available": False, "reason": "the EAP-IG run timed out"}
        if proc.returncode != 0 or not (work / "result.json").is_file():
            tail = " | ".join(proc.stderr.strip().splitlines()[-5:]) or "no error output"
            return {
                "available": False,
                "reason": f"EAP-IG run failed (exit {proc.returncode}): {tail}",
            }
        theirs = json.loads((work / "result.json").read_text())
    finally:
        shutil.rmtree(work, ignore_errors=True)

    def ours(name: str, **options: Any) -> tuple[dict[str, float], dict[str, Any]]:
        fn = method_spec(name).function()
        scores = fn(prepared_runs(case), **options).edges
        t = time_it(lambda: fn(prepared_runs(case), **options), repeat, warmup=False)
        return _named(case, scores), _spread(t.runs)

    eap_ours, eap_t = ours("eap")
    ig_ours, ig_t = ours("eap-ig-inputs", steps=steps)
    runs = theirs["runs"]
    eap_theirs = runs["EAP"]["scores"]
    ig_theirs = runs[f"EAP-IG-inputs@{steps}"]["scores"]
    ig1_theirs = runs["EAP-IG-inputs@1"]["scores"]
    # their left sum from ours (right sum) and their one-step score: the shared interior points
    predicted = {
        e: ig_ours[e] + (ig1_theirs[e] - eap_ours[e]) / steps
        for e in ig_ours
        if e in ig1_theirs and e in eap_ours
    }
    rows = []
    for label, mine, t_mine, their, their_runs, check in (
        ("EAP", eap_ours, eap_t, eap_theirs, runs["EAP"]["seconds"], eap_ours),
        (
            f"EAP-IG-inputs ({steps} steps)",
            ig_ours,
            ig_t,
            ig_theirs,
            runs[f"EAP-IG-inputs@{steps}"]["seconds"],
            predicted,
        ),
    ):
        t_theirs = _spread(their_runs)
        rows.append(
            {
                "method": label,
                "ours": t_mine,
                "theirs": t_theirs,
                "speedup": t_theirs["seconds"] / t_mine["seconds"],
                "speedup_min": t_theirs["min_s"] / t_mine["max_s"],
                "speedup_max": t_theirs["max_s"] / t_mine["min_s"],
                "agreement": compare_scores(check, their),
                "spearman": spearman(mine, their),
            }
        )
    return {
        "available": True,
        "versions": theirs["versions"],
        "shape": cfg.eapig_shape.label,
        "edges": case.graph.n_edges,
        "their_edges": runs["EAP"]["n_edges"],
        "prompts": cfg.prompts,
        "tokens": cfg.tokens,
        "tl_vs_hf_max_abs_logit_diff": theirs["tl_vs_hf_max_abs_logit_diff"],
        "rows": rows,
    }


def render(r: dict[str, Any]) -> list[str]:
    """The report's section on the EAP-IG reference."""
    lines = ["## Against the EAP-IG reference code (hannamw/EAP-IG)", ""]
    if not r.get("available"):
        return [*lines, f"Not run: {r.get('reason', 'unknown')}", ""]
    v = ", ".join(f"{k} {val}" for k, val in r["versions"].items())
    lines += [
        f"Random GPT-2 {r['shape']} ({r['edges']:,} edges ours, {r['their_edges']:,} theirs), "
        f"{r['prompts']} prompts x {r['tokens']} tokens, logit difference at the last position, "
        f"resample ablation; their TransformerLens model matches the HF logits to "
        f"{r['tl_vs_hf_max_abs_logit_diff']:.1e}. Versions: {v}. Times: median (min-max) of "
        "the repeats, theirs after one warm-up run. EAP-IG-inputs is compared with their "
        "left Riemann sum predicted from ours (module docstring: the two sums share every "
        f"interior point). Tolerance: max |ours - theirs| <= {TOLERANCE:g} x max |score|.",
        "",
        "| method | ours s | theirs s | speed-up (min-max) | max abs diff | max rel diff "
        "| within tolerance | Spearman (signed) |",
        "| --- | --- | --- | --- | ---: | ---: | --- | ---: |",
    ]
    for row in r["rows"]:
        a, o, t = row["agreement"], row["ours"], row["theirs"]
        rho = row["spearman"].get("signed")
        lines.append(
            f"| {row['method']} | {o['seconds']:.3f} ({o['min_s']:.3f}-{o['max_s']:.3f}) "
            f"| {t['seconds']:.3f} ({t['min_s']:.3f}-{t['max_s']:.3f}) "
            f"| {row['speedup']:.2f} ({row['speedup_min']:.2f}-{row['speedup_max']:.2f}) "
            f"| {a['max_abs_diff']:.2e} | {a['max_rel_diff']:.2e} "
            f"| {'yes' if a['within'] else '**no**'} | "
            f"{'-' if rho is None else f'{rho:.4f}'} |"
        )
    return [*lines, ""]


def main(argv: list[str] | None = None) -> None:
    """``python -m circuitfind.bench.speed.eapig [--quick] [--out reports]``: this comparison
    alone (the speed suite runs it too), written to ``speed_eapig.md`` / ``.json``."""
    import argparse

    from circuitfind.bench.common import Report, stamp
    from circuitfind.bench.speed.cases import FULL, QUICK

    ap = argparse.ArgumentParser(description=main.__doc__)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--out", type=Path, default=Path("reports"))
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--repeat", type=int, default=None, help="timed runs each (default: 3)")
    args = ap.parse_args(argv)
    cfg = QUICK if args.quick else FULL
    if args.repeat is not None:
        cfg = replace(cfg, repeat=max(1, args.repeat))
    command = " ".join(["python -m circuitfind.bench.speed.eapig", *sys.argv[1:]])
    started = stamp(args.seed, args.quick, command)  # before the run: its wall time counts
    result = against_eapig(cfg, args.seed)
    report = Report("speed_eapig", "Speed: against the EAP-IG reference code", started)
    report.add(*render(result))
    report.data = result
    report.write(args.out)


if __name__ == "__main__":
    main()
