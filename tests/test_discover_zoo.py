"""Discovery on the zoo's induction model recovers the known K-composition circuit."""

from __future__ import annotations

import pytest

import circuitfind as cf
from circuitfind.inspect.attention import head_scores


@pytest.fixture(scope="module")
def induction():
    model = cf.load("zoo:induction-2l")
    scores = head_scores(model)
    prev = {f"a0.h{h}" for h in range(model.cfg.n_heads) if scores["previous_token"][0, h] > 0.5}
    ind = {f"a1.h{h}" for h in range(model.cfg.n_heads) if scores["induction"][1, h] > 0.5}
    assert prev and ind  # the ground truth, from attention patterns (zoo tests check ablation)
    return model, cf.get_task("induction", model, n=64, seed=11), prev, ind


@pytest.mark.parametrize(("method", "kw"), [("acdc", {"tau": 0.05}), ("eap-ig-inputs", {})])
def test_previous_token_head_feeds_an_induction_heads_key(induction, method, kw):
    """With the previous-token information ablated (mean-positional), both methods keep an edge
    from a previous-token head into an induction head's key, in a faithful circuit. (Under
    resample ablation the corrupted prompts share the first half, so the previous-token heads'
    outputs at the attended keys are the same in both runs and that edge rightly scores 0.)"""
    model, task, prev, ind = induction
    c = cf.discover(model, task, method=method, ablation="mean-positional", progress=False, **kw)
    k_composition = [
        e
        for e in c.edge_names
        if e.endswith("<k>") and e.split("->")[0] in prev and e.split("->")[1][:-3] in ind
    ]
    assert k_composition, c.edge_names
    assert c.meta["faithfulness"] >= 0.9


@pytest.mark.parametrize("method", ["acdc", "eap-ig-inputs", "exact"])
def test_a_faithful_circuit_with_few_edges(induction, method):
    model, task, _, ind = induction
    kw = {"tau": 0.05} if method == "acdc" else {"target_faithfulness": 0.9}
    c = cf.discover(model, task, method=method, ablation="resample", progress=False, **kw)
    assert c.meta["faithfulness"] >= 0.9
    assert c.n_edges <= 0.06 * c.graph.n_edges  # 6 of 110 edges
    assert {n for n in c.nodes if n.startswith("a1")} <= ind  # only induction heads in layer 1
