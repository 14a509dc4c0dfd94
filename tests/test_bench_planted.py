"""The planted-circuit model: its ground truth holds exactly, and the known suite recovers it."""

from __future__ import annotations

import pytest
import torch

import circuitfind
from circuitfind.bench import planted
from circuitfind.bench.known import recovery, score_circuit
from circuitfind.graph import Graph
from tests.factories import method_scores


@pytest.fixture(scope="module")
def setup() -> tuple[object, object, Graph]:
    model = circuitfind.load(planted.planted_model(0))
    task = planted.planted_task(n=12, seed=0)
    return model, task, Graph.from_model(model)


def test_planted_model_does_the_task(setup) -> None:
    model, task, _ = setup
    logits = model.hf_model(task.clean).logits[:, -1]
    assert bool((logits.argmax(-1) == task.answer).all())
    assert torch.allclose(model.forward(task.clean)[:, -1], logits, atol=1e-5)


@pytest.mark.parametrize("ablation", ["resample", "mean", "zero"])
def test_exact_patching_is_zero_off_the_circuit(setup, ablation: str) -> None:
    model, task, graph = setup
    scores = method_scores(model, task, "exact", ablation).edges
    gt = planted.ground_truth(graph, ablation)
    assert int(gt.sum()) == (5 if ablation == "resample" else 7)
    assert float(scores[graph.valid & ~gt].abs().max()) <= 1e-6
    assert float(scores[gt].abs().min()) > 1.0  # every planted edge matters (logit diff ~6)


def test_positional_edges_are_invisible_to_resample(setup) -> None:
    model, task, graph = setup
    scores = method_scores(model, task, "exact").edges
    for name, carries in planted.PLANTED_EDGES.items():
        e = graph.edges[name]
        value = abs(float(scores[e.sender_index, e.receiver_index]))
        assert (value == 0.0) == (carries == "position"), name


def test_known_suite_recovers_the_planted_circuit(setup) -> None:
    model, task, _ = setup
    rows = recovery(
        model,
        task,
        planted.ground_truth,
        planted.ground_truth_nodes(),
        methods=("eap",),
        ablations=("resample",),
    )
    (row,) = rows
    assert row["status"] == "ok"
    assert row["edge_auc"] == 1.0 and row["node_auc"] == 1.0
    assert row["edge_precision"] == 1.0 and row["edge_recall"] == 1.0


def test_failures_are_recorded_not_raised(setup) -> None:
    model, task, _ = setup

    def broken(graph: Graph, ablation: str) -> torch.Tensor:
        return planted.ground_truth(graph, ablation)

    rows = recovery(model, task, broken, set(), methods=("no-such-method",), ablations=("zero",))
    assert rows[0]["status"] == "failed" and "no-such-method" in rows[0]["error"]


def test_score_circuit_node_method(setup) -> None:
    model, task, graph = setup
    circuit = circuitfind.discover(model, task, method="node", top_n=2, progress=False)
    row = score_circuit(circuit, planted.ground_truth(graph, "zero"), planted.ground_truth_nodes())
    assert row["node_auc"] == 1.0
    assert set(row["predicted_nodes"]) == {"a0.h0", "a1.h0"}
