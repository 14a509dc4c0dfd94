"""The GPT-2 reference circuits: data files -> edge sets on a GPT-2-small graph; the suite skips
without weights."""

from __future__ import annotations

import json

import torch
from transformers import GPT2Config, GPT2LMHeadModel

from circuitfind.bench import gpt2_reference as g
from circuitfind.circuit import graph_from_shape
from circuitfind.graph import Graph


def _meta_graph() -> Graph:
    from circuitfind.families import adapt

    with torch.device("meta"):
        hf = GPT2LMHeadModel(GPT2Config())
    cfg, _ = adapt(hf)
    return Graph(cfg)


def test_reference_files_carry_the_published_facts() -> None:
    ioi = g.load_reference("ioi")
    heads = [h for hs in ioi["classes"].values() for h in hs]
    assert len(heads) == len(set(heads)) == 26
    assert ioi["classes"]["name mover"] == ["9.9", "9.6", "10.0"]
    assert ioi["published"]["acdc_ground_truth_edges"] == 1041
    assert ioi["published"]["acdc_roc_auc"] == 0.869
    gt = g.load_reference("greater-than")
    assert gt["heads"] == ["0.1", "0.3", "0.5", "5.5", "6.1", "6.9", "7.10", "8.11", "9.1"]
    assert gt["mlps"] == [0, 1, 2, 3, 8, 9, 10, 11]
    assert gt["published"]["acdc_ground_truth_edges"] == 262
    assert gt["published"]["acdc_roc_auc"] == 0.853
    for ref in (ioi, gt):
        assert ref["sources"] and all("arXiv" in s["cite"] for s in ref["sources"])


def test_ioi_edges_on_a_gpt2_small_graph() -> None:
    graph = _meta_graph()
    assert graph.n_edges == 32491  # the graph ACDC's counts are out of
    edges = g.reference_edges(g.load_reference("ioi"), graph)
    names = {graph.edge_name(s, r) for s, r in edges.nonzero().tolist()}
    assert "a7.h3->a9.h9<q>" in names  # s-inhibition -> name mover query
    assert "a5.h5->a7.h3<k>" in names and "a0.h1->a8.h6<v>" in names  # induction/dup -> s-inh
    assert "a2.h2->a5.h5<k>" in names and "a4.h11->a6.h9<k>" in names  # prev -> induction key
    assert "a9.h9->logits" in names and "a11.h10->logits" in names
    assert "a4.h11->a5.h5<q>" not in names and "a5.h5->a9.h9<q>" not in names
    # 4 s-inh x 13 movers (q) + 7 ind/dup x 4 s-inh x (k, v) + 2 prev x 4 ind (k) + 13 -> logits
    assert len(names) == 4 * 13 + 7 * 4 * 2 + 2 * 4 + 13
    assert g.reference_nodes(g.load_reference("ioi"), graph) >= {"a9.h9", "a0.h10", "a4.h11"}


def test_greater_than_edges_are_the_induced_subgraph() -> None:
    graph = _meta_graph()
    ref = g.load_reference("greater-than")
    edges = g.reference_edges(ref, graph)
    names = {graph.edge_name(s, r) for s, r in edges.nonzero().tolist()}
    assert "input->a0.h1<q>" in names and "m3->a5.h5<v>" in names and "m11->logits" in names
    assert "a0.h1->m0" in names and "m8->m9" in names
    assert "a0.h2->m0" not in names and "m4->logits" not in names
    assert g.reference_nodes(ref, graph) == {
        "a0.h1", "a0.h3", "a0.h5", "a5.h5", "a6.h1", "a6.h9", "a7.h10", "a8.h11", "a9.h1",
        *(f"m{i}" for i in (0, 1, 2, 3, 8, 9, 10, 11)),
    }  # fmt: skip
    # the meta-device graph and the shape-only graph agree
    assert torch.equal(edges, g.reference_edges(ref, graph_from_shape(12, 12)))


def test_suite_skips_without_weights(tmp_path, monkeypatch) -> None:
    monkeypatch.delenv(g.ENV_MODEL, raising=False)
    result = g.run(tmp_path, quick=True, seed=0)
    assert "weights were not given" in result["skipped"]
    md = (tmp_path / "gpt2_reference.md").read_text()
    assert "Skipped" in md and "--model gpt2" in md and "1,041" in md
    assert "skipped" in json.loads((tmp_path / "gpt2_reference.json").read_text())


def test_suite_skips_on_unloadable_path(tmp_path) -> None:
    result = g.run(tmp_path, quick=True, seed=0, model=str(tmp_path / "no-gpt2-here"))
    assert "could not load GPT-2" in result["skipped"]


def test_suite_skips_a_model_that_is_not_gpt2_small(tmp_path) -> None:
    result = g.run(tmp_path, quick=True, seed=0, model="zoo:induction-2l")
    assert "not GPT-2 small" in result["skipped"]


def test_skip_never_overwrites_real_results(tmp_path) -> None:
    (tmp_path / "gpt2_reference.json").write_text(json.dumps({"results": {}}))
    (tmp_path / "gpt2_reference.md").write_text("real\n")
    g.run(tmp_path, quick=True, seed=0)
    assert (tmp_path / "gpt2_reference.md").read_text() == "real\n"


def test_cli_gpt2_suite_exit_0_when_skipped(tmp_path, monkeypatch, capsys) -> None:
    from circuitfind.cli import main

    monkeypatch.delenv(g.ENV_MODEL, raising=False)
    assert main(["benchmark", "--suite", "gpt2", "--out", str(tmp_path)]) == 0
    assert "skipped" in capsys.readouterr().out
