"""discover / evaluate: circuits, pruning rules, faithfulness, JSON."""

from __future__ import annotations

import pytest
import torch

import circuitfind as cf
from circuitfind.circuit import Circuit
from circuitfind.evaluation import roc_auc
from circuitfind.pruning import greedy, remove_dangling, top_n
from tests.factories import make_hf_model
from tests.test_patching import _random_task


@pytest.fixture(scope="module")
def setup():
    torch.manual_seed(0)
    model = cf.load(make_hf_model("gpt2"))
    return model, _random_task(n=6)


@pytest.mark.parametrize("method", list(cf.METHODS))
def test_every_method_gives_a_faithful_circuit(setup, method, tmp_path):
    model, task = setup
    c = cf.discover(
        model,
        task,
        method=method,
        progress=False,
        tau=0.02,
        train_steps=30,  # the learned masks: a short fit is enough on this model
        target_faithfulness=None if method == "acdc" else 0.8,
    )
    assert c.meta["method"] == method
    assert 0 < c.n_edges <= c.graph.n_edges
    assert set(c.meta["metrics"]) == {"full", "circuit", "empty"}
    ev = cf.evaluate(model, task, c)
    assert ev.faithfulness == pytest.approx(c.meta["faithfulness"], abs=1e-5)
    if method != "acdc":
        assert ev.faithfulness >= 0.8
    path = c.to_json(tmp_path / "c.json")
    back = Circuit.from_json(path)
    assert back.edge_names == c.edge_names
    assert back.meta["method"] == method
    scores = c.edge_scores
    assert len(scores) >= c.n_edges


def test_full_and_empty_circuits_have_faithfulness_one_and_zero(setup):
    model, task = setup
    c = cf.discover(model, task, method="eap", top_n=10, progress=False)
    graph = c.graph
    full = c.with_edges(graph.valid.clone())
    empty = c.with_edges(torch.zeros_like(graph.valid))
    assert cf.evaluate(model, task, full).faithfulness == pytest.approx(1.0, abs=1e-5)
    assert cf.evaluate(model, task, empty).faithfulness == pytest.approx(0.0, abs=1e-5)
    ev = cf.evaluate(model, task, c, curve=True)
    assert [p for p, _ in ev.curve] == [0.1, 0.2, 0.5, 1, 2, 5, 10, 20, 50, 100]
    assert ev.curve[-1][1] == pytest.approx(1.0, abs=1e-5)
    assert ev.curve_abs[-1][1] == pytest.approx(1.0, abs=1e-5)
    assert ev.cpr is not None and ev.cmd is not None and ev.cmd >= 0
    # each |score| point is the circuit discover keeps at that size (MIB's int(pct * edges))
    for pct, f in ev.curve_abs:
        n = int(graph.n_edges * pct / 100)
        at_n = cf.discover(model, task, method="eap", top_n=n, progress=False)
        assert f == pytest.approx(at_n.meta["faithfulness"], abs=1e-5), pct
    assert ev.curve_abs[0][1] == pytest.approx(0.0, abs=1e-5)  # 0.1% of 262 edges: none


def test_pruning_rules():
    model = cf.load(make_hf_model("gpt2"))
    graph = cf.Graph.from_model(model)
    scores = torch.randn(graph.n_senders, graph.n_receivers)
    keep = top_n(graph, scores, 15)
    assert int(keep.sum()) == 15
    assert scores[keep].abs().min() >= scores[graph.valid & ~keep].abs().max()
    grown = greedy(graph, scores, 12)
    assert int(grown.sum()) == 12
    # greedy: every kept edge's receiving node is logits or sends a kept edge
    for name in cf.Circuit(graph, scores, grown).edge_names:
        receiver = name.split("->")[1].split("<")[0]
        if receiver != "logits":
            s = graph.sender_index[receiver]
            assert grown[s].any()
    clean = remove_dangling(graph, keep)
    circuit = cf.Circuit(graph, scores, clean)
    g = circuit.to_networkx()
    import networkx as nx

    for node in g.nodes:
        if node not in ("input", "logits"):
            assert nx.has_path(g, "input", node) and nx.has_path(g, node, "logits")


def test_bad_arguments_are_clear_errors(setup):
    model, task = setup
    with pytest.raises(cf.InputError, match="unknown method 'magic'"):
        cf.discover(model, task, method="magic")
    with pytest.raises(cf.InputError, match="unknown ablation 'banana'"):
        cf.discover(model, task, ablation="banana")
    with pytest.raises(cf.InputError, match="at most one"):
        cf.discover(model, task, top_n=3, threshold=0.1)


def test_roc_auc_closed_form():
    scores = torch.tensor([0.9, 0.8, 0.1, 0.05, 0.7])
    ref = torch.tensor([True, True, False, False, False])
    assert roc_auc(scores, ref) == pytest.approx(1.0)
    assert roc_auc(-scores, ~ref) == pytest.approx(0.0)  # |.|: every positive below negatives
    mixed = torch.tensor([True, False, True, False, False])
    # positives 0.9, 0.1 vs negatives 0.8, 0.05, 0.7: 0.9 beats 3, 0.1 beats 1 -> 4 of 6 pairs
    assert roc_auc(scores, mixed) == pytest.approx(4 / 6)


def test_roc_auc_against_a_reference_circuit(setup):
    model, task = setup
    c = cf.discover(model, task, method="eap", top_n=20, progress=False)
    # the 20 highest-|score| edges: the scores rank them above every other edge
    reference = set(c.with_edges(top_n(c.graph, c.score_matrix, 20)).edge_names)
    ev = cf.evaluate(model, task, c, reference=reference)
    assert ev.roc_auc_edges == pytest.approx(1.0)
    assert 0.5 < ev.roc_auc_nodes <= 1.0
    spelled = {name.replace("a", "L", 1) if name.startswith("a") else name for name in reference}
    assert cf.evaluate(model, task, c, reference=spelled).roc_auc_edges == pytest.approx(1.0)


def test_the_signed_curve_ranks_helpful_edges_first_for_every_method(setup):
    """CPR must not depend on a method's sign convention: the edges that help most come first."""
    model, task = setup
    for method in ("exact", "eap", "acdc"):
        c = cf.discover(model, task, method=method, top_n=20, tau=0.02, progress=False)
        ev = cf.evaluate(model, task, c, curve=True)
        assert ev.curve[-1][1] == pytest.approx(1.0, abs=1e-5)  # every edge, scored or not
        flipped = c.with_edges(c.in_graph, score_orientation=-c.meta["score_orientation"])
        worse = cf.evaluate(model, task, flipped, curve=True)
        assert ev.cpr > worse.cpr, method


def test_methods_and_ablations_accept_common_spellings(setup):
    model, task = setup
    c = cf.discover(
        model, task, method="EAP_IG", ablation="mean_positional", top_n=5, progress=False
    )
    assert (c.meta["method"], c.meta["ablation"]) == ("eap-ig-inputs", "mean-positional")
    ev = cf.evaluate(model, task, c, ablation="patching")  # MIB's name for resample
    assert ev.ablation == "resample"
    with pytest.raises(cf.InputError, match=r"unknown ablation 'avg'.*resample, mean"):
        cf.discover(model, task, method="eap", ablation="avg", progress=False)
    with pytest.raises(cf.InputError, match=r"unknown method 'eep'.*exact"):
        cf.discover(model, task, method="eep", progress=False)
