"""Circuit JSON: round trip, and files in the shape EAP-IG / MIB write."""

from __future__ import annotations

import json

import pytest
import torch

import circuitfind as cf
from circuitfind.circuit import Circuit, graph_from_shape


def _circuit():
    graph = graph_from_shape(2, 3)
    scores = torch.randn(graph.n_senders, graph.n_receivers)
    keep = graph.valid & (scores.abs() > 1.0)
    return Circuit(graph, scores, keep, {"method": "eap", "task": "toy"})


def test_json_round_trip(tmp_path):
    c = _circuit()
    path = c.to_json(tmp_path / "c.json")
    back = Circuit.from_json(path)
    assert back.edge_names == c.edge_names
    valid = c.graph.valid
    torch.testing.assert_close(back.score_matrix[valid], c.score_matrix[valid])
    assert back.meta == c.meta
    data = json.loads(path.read_text())
    assert len(data["edges"]) == c.graph.n_edges
    assert set(data["nodes"]) == set(c.graph.nodes)
    assert data["cfg"]["n_layers"] == 2
    edge = next(iter(data["edges"].values()))
    assert set(edge) == {"score", "in_graph"}


def test_reads_an_eap_ig_style_file(tmp_path):
    # EAP-IG writes nodes as {name: bool}, edge scores may be null, cfg has extra keys.
    graph = graph_from_shape(2, 2)
    edges = {}
    for name in graph.edges:
        edges[name] = {
            "score": 0.5 if name == "a0.h1->a1.h0<k>" else None,
            "in_graph": name in {"a0.h1->a1.h0<k>", "a1.h0->logits", "input->a0.h1<v>"},
        }
    data = {
        "cfg": {
            "n_layers": 2,
            "n_heads": 2,
            "parallel_attn_mlp": False,
            "d_model": 8,
            "n_kv_heads": None,
        },
        "nodes": {n: True for n in graph.nodes},
        "edges": edges,
    }
    path = tmp_path / "eap.json"
    path.write_text(json.dumps(data))
    c = Circuit.from_json(path)
    assert sorted(c.edge_names) == sorted(["a0.h1->a1.h0<k>", "a1.h0->logits", "input->a0.h1<v>"])
    assert c.edge_scores == {"a0.h1->a1.h0<k>": 0.5}
    assert c.nodes == ["input", "a0.h1", "a1.h0", "logits"]
    g = c.to_networkx()
    assert g.number_of_edges() == 3
    assert g.edges["a0.h1", "a1.h0", "k"]["score"] == 0.5


def test_bad_files_are_clear_errors(tmp_path):
    with pytest.raises(cf.InputError, match="does not exist"):
        Circuit.from_json(tmp_path / "missing.json")
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(cf.InputError, match="not valid JSON"):
        Circuit.from_json(bad)
    bad.write_text(json.dumps({"edges": {}}))
    with pytest.raises(cf.InputError, match="not a circuit file"):
        Circuit.from_json(bad)


def test_top_edges_are_sorted_by_magnitude():
    c = _circuit()
    top = c.top_edges(5)
    mags = [abs(s) for _, s in top]
    assert mags == sorted(mags, reverse=True)
    assert all(name in c.edge_names for name, _ in top)


def test_scores_map_every_scored_edge_name_to_its_score():
    c = _circuit()
    scores = c.score_matrix.clone()
    scores[0, 0] = float("nan")  # an unscored edge (ACDC skips some) is absent
    c = Circuit(c.graph, scores, c.in_graph)
    s, r = (c.graph.valid & ~torch.isnan(c.score_matrix)).nonzero(as_tuple=True)
    assert len(c.scores) == len(s) == c.graph.n_edges - 1
    for i, j in zip(s.tolist(), r.tolist()):
        assert c.scores[c.graph.edge_name(i, j)] == pytest.approx(float(c.score_matrix[i, j]))
    name = "a0.h1->a1.h2<k>"
    assert c.scores["L0H1->L1H2<k>"] == c.scores["0.1->1.2<K>"] == c.scores[name]
    assert "A0.1->a1.h2<k>" in c.scores and "a0.h1->a0.h2<k>" not in c.scores
    with pytest.raises(KeyError):
        c.scores[c.graph.edge_name(0, 0)]
    assert dict(c.scores) == c.edge_scores
