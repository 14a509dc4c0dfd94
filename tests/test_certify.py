"""certify: the circuit's faithfulness is evaluate's (real patching), the frontier's exact
scores are exact patching's, and the mask step is pluggable by method name."""

from __future__ import annotations

import pytest
import torch
from scipy.stats import spearmanr

import circuitfind
from circuitfind.bench.planted import ground_truth
from circuitfind.certify import certify, frontier_agreement, mask_method
from circuitfind.errors import InputError
from circuitfind.methods.eap import score_eap
from circuitfind.methods.table import METHODS, MethodSpec, register, unregister
from circuitfind.scoring import prepare

pytestmark = pytest.mark.usefixtures("one_thread")


def test_certified_faithfulness_is_evaluates_on_fresh_runs(planted) -> None:
    model, task = planted
    c = certify(model, task, mask=None, ablation="mean", top_n=6, frontier=10, steps=2)
    cert = c.meta["certify"]
    assert cert["attribution_method"] == "eap-ig-inputs" and cert["mask_method"] is None
    c.runs = None  # an independent measurement: new prepared runs, new masked passes
    ev = circuitfind.evaluate(model, task, c)
    assert cert["verified"]["faithfulness"] == pytest.approx(ev.faithfulness, abs=1e-6)
    assert cert["verified"]["stderr"] == pytest.approx(ev.faithfulness_stderr, abs=1e-6)
    assert cert["verified"]["n_prompts"] == 8
    f = cert["frontier"]
    assert f["n"] == 10 and f["ranks"] == [1, 11] and f["cut_rank"] == c.n_edges
    assert -1.0 <= f["spearman"] <= 1.0 and 0.0 <= f["spearman_p"] <= 1.0
    assert len(f["disagree"]) == 5
    assert {"edge", "attribution", "exact", "rank_attribution", "rank_exact"} <= set(
        f["disagree"][0]
    )


def test_frontier_exact_scores_equal_exact_patching(planted) -> None:
    model, task = planted
    runs = prepare(model, task, "mean")
    attribution = score_eap(runs).edges
    exact = circuitfind.score(model, task, method="exact", ablation="mean", runs=runs)
    out = frontier_agreement(runs, attribution, n_kept=55, frontier=110)  # every edge
    assert out["n"] == runs.graph.n_edges == 110 and out["ranks"] == [0, 110]
    assert sum(row["in_circuit"] for row in out["edges"]) == 55
    for row in out["edges"]:
        e = runs.graph.edge(row["edge"])
        assert row["exact"] == pytest.approx(exact.scores[row["edge"]], abs=1e-5)
        assert row["attribution"] == pytest.approx(
            float(attribution[e.sender_index, e.receiver_index]), abs=1e-6
        )
    assert float(torch.tensor([r["exact"] for r in out["edges"]]).abs().max()) > 1.0
    a = [r["attribution"] for r in out["edges"]]
    x = [r["exact"] for r in out["edges"]]
    assert out["spearman"] == pytest.approx(float(spearmanr(a, x).statistic))
    # the planted circuit's edges lead both rankings
    gt = ground_truth(runs.graph, "mean")
    k = int(gt.sum())
    names = {runs.graph.edge_name(int(i), int(j)) for i, j in gt.nonzero()}
    for key in ("attribution", "exact"):
        ranked = sorted(out["edges"], key=lambda r: -abs(r[key]))
        assert {r["edge"] for r in ranked[:k]} == names


def test_certify_verifies_the_planted_circuit_and_meets_its_target(planted) -> None:
    model, task = planted
    c = certify(model, task, mask="none", frontier=8)
    cert = c.meta["certify"]
    assert cert["verified"]["target"] == 0.9 and cert["verified"]["meets_target"] is True
    assert cert["verified"]["faithfulness"] >= 0.9 and cert["verified"]["reliable"]
    assert set(c.edge_names) <= {
        c.graph.edge_name(int(i), int(j)) for i, j in ground_truth(c.graph, "resample").nonzero()
    }


def test_the_mask_step_is_pluggable_by_name(planted) -> None:
    model, task = planted
    seen: dict[str, object] = {}

    def toy_mask(runs, *, init=None):  # type: ignore[no-untyped-def]
        seen["init"] = init
        return score_eap(runs)

    register(MethodSpec(name="toy-mask", summary="a mask", fn=toy_mask, options={"init": None}))
    try:
        c = certify(model, task, mask="toy-mask", top_n=5, frontier=6)
    finally:
        unregister("toy-mask")
    assert seen["init"] == "eap-ig-inputs"  # warm-started from the fast method
    assert c.meta["certify"]["mask_method"] == "toy-mask" and c.meta["method"] == "toy-mask"
    assert c.meta["certify"]["verified"]["faithfulness"] == pytest.approx(1.0, abs=1e-5)
    assert mask_method("auto") == ("edge-pruning" if "edge-pruning" in METHODS else None)
    assert mask_method(None) is None
    with pytest.raises(InputError, match="frontier"):
        certify(model, task, frontier=-1)


def test_cli_certify_bootstrap_ensemble_summary_and_report(planted, tmp_path, capsys, monkeypatch):
    import json

    from circuitfind import commands
    from circuitfind.cli import main

    monkeypatch.setattr(commands, "_load_model_and_task", lambda args: planted)
    out = tmp_path / "run"
    argv = ["-q", "discover", "--model", "m", "--task", "t", "--top-n", "5", "--out", str(out)]
    extra = ["--certify", "--mask-method", "none", "--frontier", "6", "--bootstrap", "3"]
    assert main([*argv, *extra, "--ensemble", "exact", "--mib", "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["files"]["mib"] == str(out / "mib" / "planted-induction_m")
    mib = circuitfind.Circuit.from_mib(out / "mib")
    assert mib.scores == circuitfind.Circuit.from_json(out / "circuit.json").scores
    assert summary["certify"]["verified"]["faithfulness"] == pytest.approx(1.0, abs=1e-5)
    assert summary["certify"]["frontier"]["n"] == 6
    assert summary["stability"]["n_boot"] == 3 and summary["stability"]["core"] == 5
    assert summary["ensemble"]["methods"] == ["eap-ig-inputs", "exact"]
    saved = circuitfind.Circuit.from_json(out / "circuit.json")
    assert saved.meta["certify"]["frontier"]["n"] == 6
    report = (out / "report.html").read_text()
    for section in ("Stability", "Agreement across methods", "Certification"):
        assert f"<h2>{section}</h2>" in report
    assert main([*argv, *extra]) == 0  # the human summary
    text = capsys.readouterr().out
    assert "certified: faithfulness 1.000" in text and "frontier (6 edges" in text
    assert "stability (3 resamples): 5 core edges" in text
    with pytest.raises(SystemExit) as exc:  # 1 resample is refused: a usage error
        main([*argv, "--bootstrap", "1"])
    assert exc.value.code == 2 and "--bootstrap" in capsys.readouterr().err
    with pytest.raises(InputError, match="bootstrap"):
        circuitfind.discover(*planted, top_n=5, bootstrap=1)


def test_certify_with_a_mask_takes_an_ensemble(planted) -> None:
    """The ensemble goes to discover, not to the fast method's options (it was refused as an
    option of eap-ig-inputs when a mask step ran)."""
    model, task = planted

    def toy_mask(runs, *, init=None):  # type: ignore[no-untyped-def]
        return score_eap(runs)

    register(MethodSpec(name="toy-mask", summary="a mask", fn=toy_mask, options={"init": None}))
    try:
        c = certify(model, task, mask="toy-mask", top_n=5, frontier=0, ensemble="eap")
    finally:
        unregister("toy-mask")
    assert set(c.meta["ensemble"]["methods"]) >= {"toy-mask", "eap"}
