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
    seen: list[object] = []

    def toy_mask(runs, *, init=None):  # type: ignore[no-untyped-def]
        seen.append(init)
        return score_eap(runs)

    register(MethodSpec(name="toy-mask", summary="a mask", fn=toy_mask, options={"init": None}))
    try:
        c = certify(model, task, mask="toy-mask", top_n=5, frontier=6, candidates=None)
        auto = certify(model, task, mask="toy-mask", top_n=5, frontier=0)
    finally:
        unregister("toy-mask")
    assert seen[0] == "eap-ig-inputs"  # warm-started from the fast method
    assert c.meta["certify"]["mask_method"] == "toy-mask" and c.meta["method"] == "toy-mask"
    assert [r["label"] for r in c.meta["certify"]["candidates"]] == [
        "toy-mask (warm start from eap-ig-inputs)"
    ]
    # auto: the fast scores, the warm and the cold mask (no floor in its row: exact not added)
    assert seen[1:] == ["eap-ig-inputs", "none"]
    rows = auto.meta["certify"]["candidates"]
    assert [r["method"] for r in rows] == ["eap-ig-inputs", "toy-mask", "toy-mask"]
    best = max(range(3), key=lambda i: (rows[i]["cpr"], -i))
    assert auto.meta["certify"]["chosen"] == rows[best]["label"]
    assert auto.meta["method"] == rows[best]["method"]
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
    assert set(c.meta["ensemble"]["methods"]) >= {c.meta["method"], "eap"}


def test_candidates_auto_adds_exact_only_when_it_costs_no_more_than_the_mask() -> None:
    from circuitfind.certify import plan_candidates

    small = plan_candidates("eap-ig-inputs", "edge-pruning", 600, "auto")
    assert [(c.label, c.method, c.options) for c in small] == [
        ("eap-ig-inputs", "eap-ig-inputs", {}),
        ("edge-pruning (warm start from eap-ig-inputs)", "edge-pruning", {"init": "eap-ig-inputs"}),
        ("edge-pruning", "edge-pruning", {"init": "none"}),
        ("exact", "exact", {}),
    ]
    # 200 steps x (F + B) with B = 2F is 600 forwards: one more edge and exact costs more
    assert [c.method for c in plan_candidates("eap", "edge-pruning", 601, "auto")] == [
        "eap",
        "edge-pruning",
        "edge-pruning",
    ]
    more = plan_candidates("eap", "ugs", 1_000, "auto", {"train_steps": 400})
    assert more[-1].method == "exact"  # a longer training pays for more edges
    assert [c.method for c in plan_candidates("eap", None, 10, "auto")] == ["eap"]
    named = plan_candidates("eap", "edge-pruning", 10, "eap,edge-pruning,edge-pruning:cold,ugs")
    assert [c.label for c in named] == [
        "eap",
        "edge-pruning (warm start from eap)",
        "edge-pruning",
        "ugs",
    ]
    assert [c.label for c in plan_candidates("eap", "edge-pruning", 10, None)] == [
        "edge-pruning (warm start from eap)"
    ]
    with pytest.raises(InputError, match="named twice"):
        plan_candidates("eap", "edge-pruning", 10, "eap,eap")
    with pytest.raises(InputError, match=":cold"):
        plan_candidates("eap", "edge-pruning", 10, "ugs:hot")
    with pytest.raises(InputError, match="no warm start"):
        plan_candidates("eap", "edge-pruning", 10, "exact:cold")
    with pytest.raises(InputError, match=r"unknown method|no method"):
        plan_candidates("eap", "edge-pruning", 10, "nonsense")


def test_selection_keeps_the_largest_patched_cpr_each_measured_independently(
    planted, tmp_path
) -> None:
    """Every candidate's CPR is evaluate's curve of that method scored alone on fresh runs,
    and the certified circuit is the best one's, pruned by the rule."""
    model, task = planted
    c = certify(
        model,
        task,
        mask="edge-pruning",
        top_n=5,
        frontier=0,
        train_steps=30,
        candidates="eap,edge-pruning,exact",
        checkpoint_dir=tmp_path / "ckpt",
    )
    rows = c.meta["certify"]["candidates"]
    assert [r["method"] for r in rows] == ["eap", "edge-pruning", "exact"]
    for row in rows:
        alone = circuitfind.score(
            model, task, method=row["method"], progress=False, train_steps=30, **row["options"]
        )
        ev = circuitfind.evaluate(model, task, alone, curve=True)
        assert row["cpr"] == pytest.approx(ev.cpr, abs=1e-5)
        assert row["cpr_stderr"] > 0
    best = max(range(len(rows)), key=lambda i: (rows[i]["cpr"], -i))
    assert c.meta["certify"]["chosen"] == rows[best]["label"]
    assert c.meta["certify"]["chosen_method"] == rows[best]["method"] == c.meta["method"]
    assert c.n_edges == 5
    again = circuitfind.evaluate(model, task, c, curve=True)
    assert again.cpr == pytest.approx(rows[best]["cpr"], abs=1e-5)
    # the warm mask checkpoints where it always did, each other candidate in its own folder
    # (a finished run removes its checkpoint file: the folders are what is left)
    assert sorted(p.name for p in (tmp_path / "ckpt").iterdir()) == ["certify-exact"]


def test_cli_certify_reports_the_selection(planted, tmp_path, capsys, monkeypatch) -> None:
    import json

    from circuitfind import commands
    from circuitfind.cli import main

    monkeypatch.setattr(commands, "_load_model_and_task", lambda args: planted)
    out = tmp_path / "run"
    argv = ["-q", "discover", "--model", "m", "--task", "t", "--top-n", "5", "--out", str(out)]
    extra = ["--certify", "--mask-method", "none", "--frontier", "4", "--bootstrap", "0"]
    assert main([*argv, *extra, "--candidates", "eap,exact", "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)["certify"]
    assert [c["label"] for c in summary["candidates"]] == ["eap", "exact"]
    best = max(summary["candidates"], key=lambda c: c["cpr"])
    assert summary["chosen"] == best["label"]
    report = (out / "report.html").read_text()
    assert 'id="selection"' in report and f"{best['label']} (chosen)" in report
    assert main([*argv, *extra, "--candidates", "eap,exact"]) == 0
    assert "selection by patched CPR: eap " in capsys.readouterr().out


def test_certify_with_positions_keeps_the_planted_terms_and_patches_them_exactly(planted) -> None:
    from tests.test_stability_positions import planted_terms

    model, task = planted
    c = certify(model, task, positions=True, top_n=5, frontier=10, train_steps=40, progress=False)
    assert set(c.edge_names) == planted_terms() and c.positions is not None
    rows = c.meta["certify"]["candidates"]
    assert [r["method"] for r in rows][:3] == ["eap-ig-inputs", "edge-pruning", "edge-pruning"]
    exact = circuitfind.score(model, task, method="exact", positions=True, progress=False)
    fr = c.meta["certify"]["frontier"]
    assert fr["n"] == 10 and all("@" in r["edge"] for r in fr["edges"])
    for r in fr["edges"]:
        assert r["exact"] == pytest.approx(exact.scores[r["edge"]], abs=1e-4)
