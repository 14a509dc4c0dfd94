"""Discovery on the zoo's induction model recovers the known K-composition circuit."""

from __future__ import annotations

import pytest

import circuitfind as cf
from circuitfind.inspect.attention import head_pattern_scores


@pytest.fixture(scope="module")
def induction():
    model = cf.load("zoo:induction-2l")
    scores = head_pattern_scores(model)
    prev = {f"a0.h{h}" for h in range(model.cfg.n_heads) if scores["previous-token"][0, h] > 0.5}
    ind = {f"a1.h{h}" for h in range(model.cfg.n_heads) if scores["induction"][1, h] > 0.5}
    assert prev and ind  # the ground truth, from attention patterns (zoo tests check ablation)
    return model, cf.get_task("induction", model, n=64, seed=11), prev, ind


def _k_composition(circuit, prev, ind):
    return [
        e
        for e in circuit.edge_names
        if e.endswith("<k>") and e.split("->")[0] in prev and e.split("->")[1][:-3] in ind
    ]


@pytest.mark.parametrize(
    ("method", "kw"),
    [("acdc", {"tau": 0.05}), ("eap-ig-inputs", {"target_faithfulness": 0.9})],
)
def test_previous_token_head_feeds_an_induction_heads_key(induction, method, kw):
    """The issue's check, under the default (resample) ablation: the corrupted prompts replace
    the first half, so what differs is exactly the earlier occurrence the induction head reads
    (its key, through the previous-token head, and its value)."""
    model, task, prev, ind = induction
    c = cf.discover(model, task, method=method, progress=False, **kw)
    assert c.meta["ablation"] == "resample"
    assert _k_composition(c, prev, ind), c.edge_names
    assert c.meta["faithfulness"] >= 0.9
    assert c.n_edges <= 0.05 * c.graph.n_edges, c.edge_names  # at most 5 of 110 edges


@pytest.mark.parametrize("method", ["acdc", "eap-ig-inputs", "exact"])
@pytest.mark.parametrize("ablation", ["resample", "mean-positional"])
def test_a_faithful_circuit_with_few_edges(induction, method, ablation):
    model, task, prev, ind = induction
    kw = {"tau": 0.05} if method == "acdc" else {"target_faithfulness": 0.9}
    c = cf.discover(model, task, method=method, ablation=ablation, progress=False, **kw)
    assert c.meta["faithfulness"] >= 0.9
    assert c.n_edges <= 0.08 * c.graph.n_edges, c.edge_names  # 8 of 110 edges
    assert _k_composition(c, prev, ind), c.edge_names
    assert {n for n in c.nodes if n.startswith("a1")} <= ind  # only induction heads in layer 1
