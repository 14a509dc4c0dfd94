"""zoo:docstring: the built-in docstring task on the model trained for it, and discovery on it."""

from __future__ import annotations

import pytest

import circuitfind as cf

FRESH_SEED = 4242


@pytest.fixture(scope="module")
def model():
    return cf.load("zoo:docstring")


@pytest.mark.parametrize("corruption", ["random_random", "random_def", "random_doc"])
def test_builtin_docstring_runs_on_the_zoo(model, corruption):
    task = cf.get_task("docstring", model, n=64, seed=FRESH_SEED, corruption=corruption)
    assert task.score(model, metric="accuracy") >= 0.9
    assert task.score(model) > 1.0
    corrupted = task.score(model, which="corrupted")
    # it reads the def line: random_doc (same def line) does not move the answer
    assert corrupted > 10.0 if corruption == "random_doc" else corrupted < 1.0


def test_discovery_finds_a_faithful_circuit(model):
    task = cf.get_task("docstring", model, n=32, seed=FRESH_SEED)
    c = cf.discover(model, task, method="eap-ig-inputs", target_faithfulness=0.9, progress=False)
    assert c.meta["faithfulness"] >= 0.9
    assert c.n_edges < c.graph.n_edges
