"""The edge graph: sizes, names, spellings, networkx export."""

from __future__ import annotations

import networkx as nx
import pytest
import torch
from transformers import GPT2Config, GPT2LMHeadModel

import circuitfind as cf
from tests.factories import make_hf_model


def test_gpt2_small_has_32491_edges():
    with torch.device("meta"):
        hf = GPT2LMHeadModel(GPT2Config())
    graph = cf.Graph.from_model(cf.load(hf))
    assert graph.n_edges == 32491
    assert len(graph.edges) == 32491
    assert int(graph.valid.sum()) == 32491
    assert len(graph.nodes) == 1 + 12 * 12 + 12 + 1


def test_parallel_residual_count_by_hand_and_no_same_layer_head_to_mlp_edges():
    model = cf.load(make_hf_model("gpt_neox-parallel"))  # 3 layers, 4 heads, parallel
    graph = cf.Graph.from_model(model)
    # attention receivers: 12 per layer reading 1, 6, 11 senders; MLPs read 1, 6, 11; logits 16.
    by_hand = 12 * (1 + 6 + 11) + (1 + 6 + 11) + 16
    assert graph.n_edges == by_hand == 250
    assert not any(
        e.receiver == f"m{e.sender[1]}" for e in graph.edges.values() if e.sender.startswith("a")
    )
    sequential = cf.Graph.from_model(cf.load(make_hf_model("gpt_neox-sequential")))
    assert "a1.h0->m1" in sequential.edges  # 2 layers, 2 heads: 6*(1+4) + (3+6) + 7
    assert sequential.n_edges == 6 * 5 + 9 + 7


def test_gqa_has_one_receiver_per_query_head():
    model = cf.load(make_hf_model("llama-gqa-llama3rope"))  # 6 query heads, 2 kv heads
    graph = cf.Graph.from_model(model)
    keys = [r for r in graph.receivers if r.qkv == "k" and r.layer == 0]
    assert [r.node for r in keys] == [f"a0.h{h}" for h in range(6)]


@pytest.mark.parametrize(
    ("spelling", "canonical"),
    [
        ("a9.h6", "a9.h6"),
        ("L9H6", "a9.h6"),
        ("9.6", "a9.h6"),
        ("A9.6", "a9.h6"),
        ("l9.h6", "a9.h6"),
        ("L10H11", "a10.h11"),
        (" a2.h3 ", "a2.h3"),
        ("m3", "m3"),
        ("MLP3", "m3"),
        ("L3MLP", "m3"),
        ("input", "input"),
        ("embed", "input"),
        ("logits", "logits"),
    ],
)
def test_every_common_spelling_parses(spelling, canonical):
    assert cf.parse_node(spelling) == canonical


def test_bad_names_and_edges_are_clear_errors():
    model = cf.load(make_hf_model("gpt2"))  # 3 layers, 4 heads
    graph = cf.Graph.from_model(model)
    with pytest.raises(cf.InputError, match="cannot read 'head nine'"):
        cf.parse_node("head nine")
    with pytest.raises(cf.InputError, match=r"layers 0\.\.2"):
        graph.node("L7H1")
    with pytest.raises(cf.InputError, match=r"heads 0\.\.3"):
        graph.node("1.9")
    with pytest.raises(cf.InputError, match="<q>, <k> or <v>"):
        graph.edge("a0.h1->a1.h2")
    with pytest.raises(cf.InputError, match="not an edge"):
        graph.edge("a2.h1->a1.h2<q>")
    e = graph.edge("L0H1 -> 1.2<k>")
    assert e.name == "a0.h1->a1.h2<k>"
    assert graph.edge_name(e.sender_index, e.receiver_index) == e.name
    assert graph.edge("m0->logits").name == "m0->logits"


def test_networkx_export_and_topological_order():
    graph = cf.Graph.from_model(cf.load(make_hf_model("gpt2")))
    g = graph.to_networkx()
    assert g.number_of_edges() == graph.n_edges
    assert g.number_of_nodes() == len(graph.nodes)
    assert set(g["a0.h1"]["a1.h2"]) == {"q", "k", "v"}
    order = graph.topological_order()
    assert order[0] == "input" and order[-1] == "logits"
    pos = {n: i for i, n in enumerate(order)}
    assert all(pos[u] < pos[v] for u, v in g.edges())
    assert nx.is_directed_acyclic_graph(g)
    assert g.nodes["a1.h2"]["label"] == "L1H2"
