"""The speed suite runs end to end on a tiny config and writes its report; the auto-circuit
comparison says "unavailable" when its environment is missing, and never fails the suite."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from circuitfind.bench.speed import (
    QUICK,
    Shape,
    SpeedConfig,
    autocircuit_edge_name,
    run,
    spearman,
)

TINY = Shape(2, 2, 32)


def _tiny(tmp_path: Path) -> SpeedConfig:
    return SpeedConfig(
        shape=TINY,
        prompts=4,
        tokens=6,
        repeat=1,
        max_full_s=30.0,
        scaling_shape=TINY,
        scaling_prompts=(2, 4),
        scaling_shapes=(Shape(1, 2, 32), TINY),
        zoo=("induction-2l",),
        zoo_prompts=4,
        build_venv=False,
        autocircuit_venv=tmp_path / "no-such-venv",
        autocircuit_shape=TINY,
        autocircuit_small_shape=TINY,
        eapig_venv=tmp_path / "no-such-eapig-venv",
    )


def test_tiny_suite_writes_report(tmp_path: Path) -> None:
    out = tmp_path / "reports"
    r = run(out, quick=True, seed=0, config=_tiny(tmp_path))
    for name in ("speed.md", "speed.json", "speed_prompts.png", "speed_graph_size.png"):
        assert (out / name).is_file(), name
    saved = json.loads((out / "speed.json").read_text())
    assert saved["stamp"]["seed"] == 0 and saved["stamp"]["machine"]["cores"]
    main, zoo = r["cases"]
    assert main["edges"] == 46 and zoo["case"] == "zoo:induction-2l"
    assert set(main["methods"]) == {
        "exact",
        "acdc",
        "eap",
        "eap-ig-inputs",
        "eap-ig-activations",
        "node",
    }
    for m in main["methods"].values():
        assert m["seconds"] > 0 and m["how"]
    assert main["methods"]["eap"]["baseline"] == "2F + B"
    assert "met" in main["methods"]["exact"]
    assert [p["prompts"] for p in r["scaling"]["prompts"]] == [2, 4]
    assert [p["edges"] for p in r["scaling"]["graph_size"]] == [13, 46]
    ac = r["autocircuit"]
    assert ac["available"] is False and "no auto-circuit environment" in ac["reason"]
    md = (out / "speed.md").read_text()
    assert "Command: `" in md and "Seed: 0" in md and "torch" in md
    assert "auto-circuit unavailable" in md and "median" in md
    eg = r["eapig"]
    assert eg["available"] is False and "no EAP-IG environment" in eg["reason"]
    assert "EAP-IG reference" in md and "arithmetic bound" in md


def test_extrapolation_is_labelled(tmp_path: Path) -> None:
    cfg = _tiny(tmp_path)
    from dataclasses import replace

    cfg = replace(cfg, max_full_s=0.0, zoo=(), autocircuit=False, scaling_shapes=(TINY,))
    r = run(tmp_path / "r", quick=True, seed=1, config=cfg)
    methods = r["cases"][0]["methods"]
    for name in ("exact", "acdc", "node"):
        assert methods[name]["how"].startswith("extrapolated"), name
    assert "disabled" in r["autocircuit"]["reason"]


def test_autocircuit_edge_names() -> None:
    assert autocircuit_edge_name("Resid Start->A1.2.Q") == "input->a1.h2<q>"
    assert autocircuit_edge_name("A0.3->A1.0.K") == "a0.h3->a1.h0<k>"
    assert autocircuit_edge_name("MLP 0->A1.1.V") == "m0->a1.h1<v>"
    assert autocircuit_edge_name("A0.3->MLP 1") == "a0.h3->m1"
    assert autocircuit_edge_name("MLP 11->Resid End") == "m11->logits"
    with pytest.raises(ValueError):
        autocircuit_edge_name("Resid Mid 0->MLP 0")


def test_spearman_over_common_finite_edges() -> None:
    ours = {"a": 1.0, "b": 2.0, "c": 3.0, "d": float("nan"), "e": 5.0}
    theirs = {"a": -10.0, "b": -20.0, "c": -30.0, "d": 1.0}
    rho = spearman(ours, theirs)
    assert rho["edges"] == 3
    assert rho["signed"] == pytest.approx(-1.0) and rho["abs"] == pytest.approx(1.0)
    assert spearman({"a": 1.0}, {"a": 1.0})["signed"] is None


def test_quick_config_is_gpt2_small() -> None:
    assert (QUICK.shape.layers, QUICK.shape.heads, QUICK.shape.d_model) == (12, 12, 768)
    assert QUICK.prompts == 32 and QUICK.tokens == 16


def test_pass_rules_give_each_method_its_floor() -> None:
    from circuitfind.bench.speed.rules import apply_rules, pass_rules

    F, FB, E, N = 2.0, 5.0, 100, 10  # B = 3
    methods = {name: {"seconds": 12.0, "steps": 5} for name in QUICK.methods}
    apply_rules(methods, pass_rules(QUICK), F, FB, {"run": 1, "edge": E, "node": N})
    eap, ig, exact = methods["eap"], methods["eap-ig-inputs"], methods["exact"]
    assert eap["ratio"] == pytest.approx(12.0 / (2 * F + 3)) and eap["baseline"] == "2F + B"
    assert eap["met"] is False and eap["target_text"] == "<= 1.3 x (2F + B)"
    assert ig["ratio"] == pytest.approx(12.0 / (6 * F + 5 * 3)) and ig["met"] is True
    assert ig["target_text"] == "<= 1.3 x (6F + 5B)"
    assert "met" not in methods["eap-ig-activations"]
    assert exact["speedup"] == pytest.approx(F * E / 12.0) and exact["met"] is True
    assert exact["per_edge_s"] == pytest.approx(0.12)
    assert methods["acdc"]["per_edge_s"] == pytest.approx(0.12) and "ratio" not in methods["acdc"]
    assert methods["node"]["per_node_s"] == pytest.approx(1.2)
    assert all(m["x_F"] == pytest.approx(6.0) for m in methods.values())


@pytest.mark.slow
def test_exact_bound_counts_the_patched_passes_flops() -> None:
    """The bound's multiply-adds against torch's FLOP counter over real patched passes (one
    sender per receiver, weighted by its edges) and a real forward."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    from circuitfind.bench.speed.bounds import exact_bound
    from circuitfind.bench.speed.cases import random_case
    from circuitfind.methods.exact import _patched_logits

    case = random_case(Shape(2, 2, 32), 2, 8, 0)
    model, graph, task = case.model, case.graph, case.task
    b, p = task.clean.shape
    with torch.no_grad():
        _, cache = model.run_with_cache(task.clean, task.attention_mask)
        ctx = model.context(task.clean, task.attention_mask)
        with FlopCounterMode(display=False) as fwd:
            model(task.clean, task.attention_mask)
        edge_flops, edges = 0.0, 0
        for r in range(graph.n_receivers):
            delta = torch.randn(b, p, model.cfg.d_model)
            with FlopCounterMode(display=False) as fc:
                _patched_logits(model, graph, cache, ctx, task.readout, r, delta)
            n = int(graph.n_upstream[r])
            edge_flops += fc.get_total_flops() * n
            edges += n
    bound = exact_bound(model.cfg, graph, p)
    measured = fwd.get_total_flops() / (edge_flops / edges)
    assert bound["speedup"] == pytest.approx(measured, rel=0.05)


def test_eapig_scores_compared_with_tolerance() -> None:
    from circuitfind.bench.speed.eapig import TOLERANCE, compare_scores

    ours = {"a": 1.0, "b": -2.0, "c": 0.5}
    close = {"a": 1.0 + TOLERANCE, "b": -2.0, "c": 0.5, "d": 9.0}
    r = compare_scores(ours, close)
    assert r["edges"] == 3 and r["theirs_only"] == 1 and r["within"]
    assert r["max_rel_diff"] == pytest.approx(TOLERANCE / 2)
    far = compare_scores(ours, {"a": 1.1, "b": -2.0, "c": 0.5})
    assert not far["within"] and far["max_abs_diff"] == pytest.approx(0.1)


@pytest.mark.slow
def test_eapig_reference_agrees_when_its_venv_exists() -> None:
    """The EAP-IG reference (its own venv) on a tiny random GPT-2: EAP equal, EAP-IG-inputs
    equal to its left sum predicted from ours, both within the stated tolerance."""
    from dataclasses import replace

    from circuitfind.bench.speed.eapig import against_eapig, default_venv

    if not (default_venv() / "bin" / "python").is_file():
        pytest.skip("no EAP-IG venv (benchmarks/eapig/setup_venv.sh)")
    cfg = replace(QUICK, eapig_shape=Shape(2, 4, 64), prompts=4, tokens=8, repeat=1, ig_steps=3)
    r = against_eapig(cfg, 0)
    assert r["available"], r.get("reason")
    assert r["edges"] == r["their_edges"] == 110
    for row in r["rows"]:
        assert row["agreement"]["edges"] == 110 and row["agreement"]["within"], row
        assert row["speedup"] > 0
