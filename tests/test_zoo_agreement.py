"""zoo:agreement: the built-in agreement task on the model trained for it, and discovery on it."""

from __future__ import annotations

import pytest

import circuitfind as cf
from circuitfind.tasks.agreement import STRUCTURES

FRESH_SEED = 4242


@pytest.fixture(scope="module")
def model():
    return cf.load("zoo:agreement")


@pytest.mark.parametrize("structure", STRUCTURES)
def test_builtin_agreement_runs_on_the_zoo(model, structure):
    task = cf.get_task("agreement", model, n=64, seed=FRESH_SEED, structure=structure)
    assert task.score(model, metric="accuracy") >= 0.9
    assert task.score(model) > 1.0  # logit difference, agreeing minus disagreeing form
    assert task.score(model, which="corrupted") < -1.0  # the number swap flips it


def test_discovery_finds_a_small_faithful_circuit(model):
    task = cf.get_task("agreement", model, n=32, seed=FRESH_SEED)
    c = cf.discover(model, task, method="eap-ig-inputs", target_faithfulness=0.9, progress=False)
    assert c.meta["faithfulness"] >= 0.9
    assert c.n_edges <= 0.5 * c.graph.n_edges, c.n_edges
