"""The method-comparison suite's pieces: score orientation for CPR, stability statistics."""

from __future__ import annotations

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
