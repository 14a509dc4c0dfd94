"""Speed suite: every scoring method against the bare Hugging Face forward/backward, in one run.

    circuitfind benchmark --suite speed [--quick] [--out reports/] [--seed 0]
        [--set autocircuit=false] [--set build_venv=true]

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

Modules: ``cases`` (shapes, settings, models and tasks), ``rules`` (each method's floor and
target: the one per-method table), ``measure`` (timing the baseline, the methods, the scaling),
``peers`` (auto-circuit), ``report`` (markdown and plots).
"""

from __future__ import annotations

import json
import logging
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

from circuitfind.bench.common import Report, stamp
from circuitfind.bench.speed.cases import (
    FULL,
    GPT2_SMALL,
    QUICK,
    Shape,
    SpeedConfig,
    random_case,
    zoo_case,
)
from circuitfind.bench.speed.measure import measure_case, scaling
from circuitfind.bench.speed.peers import against_autocircuit, autocircuit_edge_name, spearman
from circuitfind.bench.speed.report import render_markdown, write_plots

__all__ = [
    "FULL",
    "GPT2_SMALL",
    "QUICK",
    "Shape",
    "SpeedConfig",
    "autocircuit_edge_name",
    "random_case",
    "run",
    "spearman",
]

logger = logging.getLogger(__name__)

TITLE = "Speed: every scoring method against the bare Hugging Face forward/backward"


def run(
    out_dir: Path,
    *,
    quick: bool,
    seed: int,
    config: SpeedConfig | None = None,
    autocircuit: bool | None = None,
    build_venv: bool | None = None,
    eapig: bool | None = None,
    command: str | None = None,
) -> dict[str, Any]:
    """Run the speed suite and write ``speed.md``, ``speed.json`` and ``speed_*.png`` under
    ``out_dir``. ``autocircuit`` / ``build_venv`` override the config's (``--set``). Returns the
    results (the JSON's content) and the files written."""
    cfg = config or (QUICK if quick else FULL)
    if autocircuit is not None:
        cfg = replace(cfg, autocircuit=bool(autocircuit))
    if build_venv is not None:
        cfg = replace(cfg, build_venv=bool(build_venv))
    if eapig is not None:
        cfg = replace(cfg, eapig=bool(eapig))
    out_dir = Path(out_dir)
    report = Report("speed", TITLE, stamp(seed, quick, command))
    result: dict[str, Any] = {
        "suite": "speed",
        "config": json.loads(json.dumps(asdict(cfg), default=str)),
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
        result["autocircuit"] = {"available": False, "reason": "disabled (autocircuit=false)"}
    if cfg.eapig:
        from circuitfind.bench.speed.eapig import against_eapig

        try:
            result["eapig"] = against_eapig(cfg, seed)
        except Exception as e:  # never fail the suite for the peer's sake
            logger.exception("EAP-IG comparison failed")
            result["eapig"] = {"available": False, "reason": f"{type(e).__name__}: {e}"}
    else:
        result["eapig"] = {"available": False, "reason": "disabled (eapig=false)"}
    out_dir.mkdir(parents=True, exist_ok=True)
    plots = write_plots(result, out_dir)
    report.files.extend(plots.values())
    report.add(*render_markdown(result, plots))
    report.data = result
    files = report.write(out_dir)
    return {"stamp": report.stamp, **result, "files": files}
