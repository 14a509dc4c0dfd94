"""The method-comparison suite's pieces: score orientation for CPR, stability statistics."""

from __future__ import annotations

import pytest
import torch

import circuitfind
from circuitfind.bench import compare
from circuitfind.bench.planted import planted_model, planted_task
from circuitfind.graph import Graph


def test_contribution_orients_helpful_edges_up() -> None:
    model = circuitfind.load(planted_model(0))
    task = planted_task(n=8)
    for method in ("exact", "eap", "acdc", "node"):
        c = circuitfind.discover(model, task, method=method, top_n=1, progress=False)
        contrib = compare.contribution(c)
        e = c.graph.edges["a1.h0->logits"]
        assert float(contrib[e.sender_index, e.receiver_index]) > 0, method


def test_one_method_curves_and_stability() -> None:
    model = circuitfind.load(planted_model(0))
    graph = Graph.from_model(model)
    runs = [compare._one(model, planted_task(n=8, seed=s), "eap") for s in (0, 1)]
    for r in runs:
        assert r["cpr"] > 0.5 and r["cmd"] < 0.5  # the planted circuit is found by contribution
    stab = compare._stability(graph, runs)
    assert stab["k"] == round(graph.n_edges * compare.TOP_PCT / 100)
    assert 0.0 <= stab["mean_jaccard"] <= 1.0 and stab["in_all"] <= stab["k"] <= stab["union"]
    assert stab["inclusion_frequency"]["a1.h0->logits"] == 1.0
    assert set(stab["faithfulness_spread"]) == {str(p) for p in compare.SPREAD_PCTS}
    assert torch.isfinite(torch.tensor(stab["faithfulness_spread"]["10.0"]["mean"]))


def test_certified_against_the_best_single_method_is_paired_by_prompt_set():
    from circuitfind.bench.compare import CERTIFIED, _certified_lines, _certified_vs_best

    per_method = {
        "eap": [{"cpr": 0.5}, {"cpr": 0.7}],
        "exact": [{"cpr": 0.8}, {"cpr": 0.6}],  # best on average (0.7 vs 0.6)
        CERTIFIED: [{"cpr": 0.9}, {"cpr": 0.6}],
    }
    c = _certified_vs_best(per_method)
    assert c is not None and c["best_single"] == "exact"
    assert c["certified_cpr"] == pytest.approx(0.75) and c["best_cpr"] == pytest.approx(0.7)
    assert c["difference_mean"] == pytest.approx(0.05)  # (0.1 + 0.0) / 2
    assert c["difference_std"] == pytest.approx(0.05)
    assert c["at_least_best"] and "at least the best" in _certified_lines(c)[0]
    assert _certified_vs_best({"eap": [{"cpr": 0.5}]}) is None
