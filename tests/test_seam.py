"""The engine seam: methods in one table over shared prepared runs."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

import circuitfind as cf
from circuitfind.methods import METHODS, MethodSpec, register, unregister
from circuitfind.methods.table import markdown_table, method_options, method_spec
from circuitfind.runs import PreparedRuns
from circuitfind.scores import Scores

ROOT = Path(__file__).resolve().parents[1]


def _toy(runs: PreparedRuns, *, scale: float = 1.0) -> Scores:
    """A toy method: every edge scored by its index (times ``scale``)."""
    g = runs.graph
    edges = torch.arange(g.n_senders * g.n_receivers, dtype=torch.float32).view(
        g.n_senders, g.n_receivers
    )
    edges = edges * scale
    edges[~g.valid] = float("nan")
    return Scores(edges)


@pytest.fixture
def toy_method():
    spec = register(
        MethodSpec(
            name="toy-index",
            summary="every edge scored by its index",
            fn=_toy,
            aliases=("toy",),
            options={"scale": 1.0},
            option_help={"scale": "a factor on every score"},
            cost="free",
        )
    )
    yield spec
    unregister(spec.name)


def test_a_method_registered_at_run_time_is_used_by_score_and_the_cli(toy_method, tmp_path):
    model = cf.load("zoo:induction-2l")
    task = cf.get_task("induction", model, n=8, seed=0)
    scored = cf.score(model, task, method="TOY_index", scale=2.0, progress=False)
    g = scored.graph
    expected = torch.arange(g.n_senders * g.n_receivers, dtype=torch.float32).view_as(g.valid)
    torch.testing.assert_close(scored.score_matrix[g.valid], 2.0 * expected[g.valid])
    assert scored.n_edges == 0 and scored.meta["method"] == "toy-index"
    assert scored.meta["options"] == {"scale": 2.0}

    from circuitfind.cli import main

    out = tmp_path / "run"
    code = main(
        [
            "-q",
            "discover",
            "--model",
            "zoo:induction-2l",
            "--task",
            "induction",
            "--n",
            "8",
            "--method",
            "toy",
            "--scale",
            "3",
            "--top-n",
            "110",
            "--out",
            str(out),
            "--json",
        ]
    )
    assert code == 0
    saved = cf.Circuit.from_json(out / "circuit.json")
    assert saved.meta["method"] == "toy-index" and saved.meta["options"] == {"scale": 3.0}
    assert saved.n_edges == saved.graph.n_edges == 110  # every edge: the toy's scores are all > 0


def test_the_method_table_refuses_duplicates_and_unknown_options():
    with pytest.raises(cf.InputError, match="already registered"):
        register(MethodSpec(name="eap", summary="again", fn=_toy))
    with pytest.raises(cf.InputError, match="takes no option 'tua'"):
        method_options(method_spec("eap"), {"tua": 1.0})
    assert method_options(method_spec("eap"), {"tau": 1.0}) == {}  # ACDC's: ignored here
    assert method_options(method_spec("acdc"), {"tau": 1.0, "steps": 3})["tau"] == 1.0
    with pytest.raises(cf.InputError, match="unknown method"):
        method_spec("no-such-method")
    assert method_spec("EAP_IG").name == "eap-ig-inputs"


def test_the_readme_methods_table_is_the_method_table():
    readme = (ROOT / "README.md").read_text()
    assert markdown_table() in readme
    for spec in METHODS.values():
        assert spec.function() is not None  # every row's function imports


def test_discover_makes_one_clean_and_one_ablated_pass_per_batch(monkeypatch):
    """Every method, the pruning search and the evaluation share one set of prepared runs."""
    model = cf.load("zoo:induction-2l")
    task = cf.get_task("induction", model, n=8, seed=0)
    calls = {"clean": 0, "corrupted": 0, "forward": 0}
    original_cache = type(model).cache
    original_outputs = type(model).node_outputs
    original_forward = type(model).forward

    def count(tokens):
        for which in ("clean", "corrupted"):
            rows = getattr(task, which)[:, : tokens.shape[1]]
            if any(torch.equal(tokens, rows[i : i + tokens.shape[0]]) for i in (0, 4)):
                calls[which] += 1

    def counting_cache(self, tokens, *args, **kwargs):
        count(tokens)
        return original_cache(self, tokens, *args, **kwargs)

    def counting_outputs(self, tokens, *args, **kwargs):  # a cache-less pass (the corrupted)
        count(tokens)
        return original_outputs(self, tokens, *args, **kwargs)

    def counting_forward(self, *args, **kwargs):
        calls["forward"] += 1
        return original_forward(self, *args, **kwargs)

    monkeypatch.setattr(type(model), "cache", counting_cache)
    monkeypatch.setattr(type(model), "node_outputs", counting_outputs)
    monkeypatch.setattr(type(model), "forward", counting_forward)
    for method, options in (("exact", {}), ("eap-ig-inputs", {}), ("node", {}), ("acdc", {})):
        calls.update(clean=0, corrupted=0, forward=0)
        circuit = cf.discover(
            model, task, method=method, batch_size=4, curve=True, progress=False, **options
        )
        assert calls["corrupted"] == 2, (method, calls)  # one ablated pass per batch
        assert calls["clean"] <= 2, (method, calls)  # at most one clean pass per batch
        assert calls["forward"] == 0, (method, calls)  # no separate clean-logits run
        assert circuit.meta["evaluation"]["curve"], method


def test_score_prune_evaluate_compose_to_discover():
    model = cf.load("zoo:induction-2l")
    task = cf.get_task("induction", model, n=16, seed=3)
    found = cf.discover(model, task, method="eap", top_n=6, progress=False)
    scored = cf.score(model, task, method="eap", progress=False)
    assert scored.n_edges == 0
    pruned = cf.prune(scored, top_n=6)
    assert torch.equal(pruned.in_graph, found.in_graph)
    ev = cf.evaluate(model, task, pruned)
    assert ev.faithfulness == pytest.approx(found.meta["faithfulness"], abs=1e-6)
    # a scored circuit read back from JSON has no runs: pruning to a target needs the model
    again = cf.Circuit.from_dict(json.loads(json.dumps(scored.to_dict())))
    with pytest.raises(cf.InputError, match="model= and task="):
        cf.prune(again, target_faithfulness=0.9)
    by_target = cf.prune(again, target_faithfulness=0.9, model=model, task=task)
    assert by_target.meta["pruning"]["met"] is True


def test_pruning_arguments_are_checked():
    model = cf.load("zoo:induction-2l")
    scored = cf.score(model, cf.get_task("induction", model, n=4), progress=False)
    for kwargs, match in (
        ({"top_n": 3, "threshold": 0.1}, "at most one"),
        ({"threshold": -1.0}, "must be >= 0"),
        ({"target_faithfulness": -1.0}, "target faithfulness"),
        ({"top_n": -2}, "non-negative"),
    ):
        with pytest.raises(cf.InputError, match=match):
            cf.prune(scored, **kwargs)


def test_top_edges_ranks_kept_edges_and_top_scored_every_edge():
    model = cf.load("zoo:induction-2l")
    task = cf.get_task("induction", model, n=8)
    c = cf.discover(model, task, method="eap", top_n=3, progress=False)
    assert len(c.top_edges(5)) == c.n_edges <= 3
    top = c.top_scored(5)
    assert len(top) == 5
    mags = [abs(s) for _, s in top]
    assert mags == sorted(mags, reverse=True)
    assert mags[0] == pytest.approx(float(c.score_matrix[c.graph.valid].abs().max()))
