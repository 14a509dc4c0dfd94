"""Diagrams: the DOT has exactly the circuit's nodes and edges, styled; images are valid files."""

from __future__ import annotations

import re
import shutil
import xml.etree.ElementTree as ET

import pytest
import torch

from circuitfind.circuit import Circuit, graph_from_shape
from circuitfind.errors import InputError
from circuitfind.render import (
    EDGE_COLOURS,
    HURTS_STYLE,
    MAX_EDGES,
    MAX_PNG_INCHES,
    NEGATIVE_STYLE,
    PNG_DPI,
    GraphvizNotFoundError,
    dot_source,
    render,
)
from circuitfind.roles import ROLE_COLOURS, Role

needs_dot = pytest.mark.skipif(shutil.which("dot") is None, reason="graphviz `dot` not installed")

EDGES = {
    "input->a0.h1<q>": 0.5,
    "input->a0.h1<k>": -0.2,
    "a0.h1->a1.h0<v>": 2.0,
    "a0.h1->a1.h0<k>": 0.1,
    "m0->a1.h0<q>": -1.0,
    "a1.h0->logits": 1.5,
    "input->m0": 0.3,
    "m0->logits": 0.05,
}


def small_circuit() -> Circuit:
    graph = graph_from_shape(2, 2)
    scores = torch.randn(graph.n_senders, graph.n_receivers) * 0.01
    keep = torch.zeros_like(graph.valid)
    for name, score in EDGES.items():
        e = graph.edges[name]
        scores[e.sender_index, e.receiver_index] = score
        keep[e.sender_index, e.receiver_index] = True
    return Circuit(graph, scores, keep, {"model": "toy", "task": "ioi", "method": "eap"})


_ATTRS = re.compile(r'(\w+)=("(?:[^"\\]|\\.)*"|<.*>|[^\s\]]+)')


def parse_dot(source: str) -> tuple[dict[str, dict[str, str]], list[tuple[str, str, dict]]]:
    """Nodes {name: attrs} and edges [(tail, head, attrs)] of the DOT (layout helpers dropped)."""
    nodes: dict[str, dict[str, str]] = {}
    edges = []
    for line in source.splitlines():
        line = line.strip()
        m = re.match(r'^"?([\w.]+)"?\s*->\s*"?([\w.]+)"?\s*\[(.*)\]$', line)
        if m:
            attrs = {k: v.strip('"') for k, v in _ATTRS.findall(m.group(3))}
            if attrs.get("style") != "invis":
                edges.append((m.group(1), m.group(2), attrs))
            continue
        m = re.match(r'^"?([\w.]+)"?\s*\[(.*)\]$', line)
        if m and m.group(1) not in ("graph", "node", "edge"):
            nodes[m.group(1)] = {k: v.strip('"') for k, v in _ATTRS.findall(m.group(2))}
    nodes = {k: v for k, v in nodes.items() if not k.startswith("rank_")}
    return nodes, edges


def test_dot_has_exactly_the_circuits_nodes_and_edges():
    c = small_circuit()
    roles = {"a0.h1": Role("a0.h1", "previous-token", 0.9), "a1.h0": "name-mover"}
    nodes, edges = parse_dot(dot_source(c, roles=roles).source)
    assert set(nodes) == set(c.nodes) == {"input", "a0.h1", "m0", "a1.h0", "logits"}
    assert len(edges) == len(EDGES)
    by_name = {}
    for tail, head, attrs in edges:
        name = attrs["tooltip"].split(":")[0]
        assert name.startswith(f"{tail}->{head}")
        by_name[name] = attrs
    assert set(by_name) == set(EDGES)
    for name in EDGES:
        attrs = by_name[name]
        qkv = name[-2] if name.endswith(">") else ""
        assert attrs["color"] == EDGE_COLOURS[qkv]
        # no orientation and no metrics: which sign helps is unknown, so nothing is dashed
        assert attrs.get("style") != NEGATIVE_STYLE and "sign of help unknown" in attrs["tooltip"]
    # width grows with |score|: the strongest edge is the widest
    widths = {n: float(a["penwidth"]) for n, a in by_name.items()}
    assert max(widths, key=widths.get) == "a0.h1->a1.h0<v>"
    assert widths["m0->a1.h0<q>"] > widths["input->a0.h1<k>"]
    # q, k, v and other edges have four distinct colours
    assert len({EDGE_COLOURS[k] for k in ("q", "k", "v", "")}) == 4
    # heads labelled L1H0, filled by role
    assert nodes["a0.h1"]["label"].startswith("L0H1")
    assert nodes["a0.h1"]["fillcolor"] == ROLE_COLOURS["previous-token"]
    assert nodes["a1.h0"]["fillcolor"] == ROLE_COLOURS["name-mover"]
    assert "rounded" in dot_source(c).source


def test_layout_input_bottom_logits_top_one_rank_per_layer():
    source = dot_source(small_circuit()).source
    assert "rankdir=BT" in source
    # rank anchors are chained in layer order: input < layer 0 < m0 < layer 1 < logits
    chain = re.findall(r'"?(rank_\w+)"?\s*->\s*"?(rank_\w+)"?', source)
    assert [a for a, _ in chain] + [chain[-1][1]] == [
        "rank_input",
        "rank_L0",
        "rank_L0m",
        "rank_L1",
        "rank_logits",
    ]
    assert "legend" in source and "does not record which" in source


def test_empty_circuit_draws_input_and_logits():
    c = small_circuit()
    empty = c.with_edges(torch.zeros_like(c.in_graph))
    nodes, edges = parse_dot(dot_source(empty).source)
    assert set(nodes) == {"input", "logits"} and edges == []


@needs_dot
def test_svg_and_png_are_valid_files(tmp_path):
    c = small_circuit()
    svg = render(c, tmp_path / "c.svg", roles={"a0.h1": "induction"})
    assert (tmp_path / "c.gv").read_text().startswith("digraph")
    root = ET.parse(svg).getroot()
    assert root.tag.endswith("svg")
    assert "L0H1" in svg.read_text()
    png = render(c, tmp_path / "c.png")
    data = png.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 1000
    pdf = render(c, tmp_path / "c.pdf")
    assert pdf.read_bytes()[:4] == b"%PDF"


def test_gv_only_needs_no_dot(tmp_path, monkeypatch):
    monkeypatch.setattr(shutil, "which", lambda _: None)
    out = render(small_circuit(), tmp_path / "c.gv")
    assert out == tmp_path / "c.gv" and out.read_text().startswith("digraph")


def test_missing_dot_writes_source_and_says_how_to_install(tmp_path, monkeypatch):
    monkeypatch.setattr(shutil, "which", lambda _: None)
    with pytest.raises(GraphvizNotFoundError, match="apt-get install graphviz") as err:
        render(small_circuit(), tmp_path / "c.svg")
    assert (tmp_path / "c.gv").is_file()
    assert "\n" not in str(err.value)
    assert not (tmp_path / "c.svg").exists()


def test_unknown_suffix_is_an_input_error(tmp_path):
    with pytest.raises(InputError, match=r"\.svg"):
        render(small_circuit(), tmp_path / "c.jpg")


def test_to_networkx_matches_the_drawing():
    c = small_circuit()
    g = c.to_networkx()
    assert set(g.nodes) == set(c.nodes)
    assert g.number_of_edges() == len(EDGES)


# ------------------------------------------------ what the picture says: sign, size, rows
def _big_circuit(n_edges: int = 400) -> Circuit:
    graph = graph_from_shape(6, 8)
    gen = torch.Generator().manual_seed(0)
    scores = torch.randn(graph.n_senders, graph.n_receivers, generator=gen)
    valid = graph.valid.nonzero()
    chosen = valid[torch.randperm(len(valid), generator=gen)[:n_edges]]
    keep = torch.zeros_like(graph.valid)
    keep[chosen[:, 0], chosen[:, 1]] = True
    return Circuit(graph, scores, keep, {"model": "toy", "task": "ioi", "score_orientation": 1.0})


def test_edges_are_drawn_by_helpfulness_not_by_sign():
    c = small_circuit()
    c.meta["score_orientation"] = -1.0  # the metric falls when an edge is ablated
    source = dot_source(c).source
    _, edges = parse_dot(source)
    for _, _, attrs in edges:
        name = attrs["tooltip"].split(":")[0]
        helps = EDGES[name] * -1.0 > 0
        assert (attrs.get("style") == HURTS_STYLE) == (not helps), name
        assert ("helps the task" in attrs["tooltip"]) == helps
    assert "helps the task" in source and "hurts the task" in source
    assert "negative score" not in source
    # without an orientation, the saved metrics decide (empty below full: ablation lowers it)
    c.meta.pop("score_orientation")
    c.meta["metrics"] = {"full": 3.0, "empty": 0.1}
    assert parse_dot(dot_source(c).source)[1] == edges


def test_every_row_is_labelled_mlp_rows_too():
    source = dot_source(small_circuit()).source
    found = re.findall(r'"?(rank_\w+)"?\s*\[label=("[^"]*"|\w+)', source)
    labels = {rank: label.strip('"') for rank, label in found}
    assert labels == {
        "rank_input": "tokens",
        "rank_L0": "layer 0",
        "rank_L0m": "layer 0 MLP",
        "rank_L1": "layer 1",
        "rank_logits": "output",
    }


def test_a_big_circuit_keeps_its_strongest_edges_and_says_how_many_are_left_out():
    c = _big_circuit(400)
    assert c.n_edges == 400
    _, edges = parse_dot(dot_source(c).source)
    assert len(edges) == MAX_EDGES
    drawn = {a["tooltip"].split(":")[0] for _, _, a in edges}
    strongest = {name for name, _ in c.top_edges(MAX_EDGES)}
    assert drawn == strongest
    assert "showing the 150 strongest of 400 edges" in dot_source(c).source
    assert "250 left out" in dot_source(c).source
    assert len(parse_dot(dot_source(c, max_edges=None).source)[1]) == 400
    small = parse_dot(dot_source(small_circuit()).source)[1]
    assert len(small) == len(EDGES) and "left out" not in dot_source(small_circuit()).source


@needs_dot
def test_png_is_capped_in_size_with_a_message(tmp_path, caplog):
    import logging
    import struct

    c = _big_circuit(400)
    with caplog.at_level(logging.WARNING, logger="circuitfind.render"):
        png = render(c, tmp_path / "big.png")
    width, height = struct.unpack(">II", png.read_bytes()[16:24])
    assert max(width, height) <= MAX_PNG_INCHES * PNG_DPI
    assert "250 are left out" in caplog.text
