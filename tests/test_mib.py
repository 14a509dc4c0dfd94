"""MIB export: importance scores and the nine circuits round-trip, and a file written by hand in
MIB's documented format (EAP-IG's graph JSON in a {task}_{model} folder) is read."""

from __future__ import annotations

import json

import pytest
import torch

import circuitfind
from circuitfind.bench.planted import planted_model, planted_task
from circuitfind.circuit import Circuit, graph_from_shape
from circuitfind.errors import InputError
from circuitfind.mib import IMPORTANCES, MIB_PERCENTS, folder_name

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def scored() -> Circuit:
    torch.set_num_threads(1)  # before the function-scoped fixture: this one runs first
    model = circuitfind.load(planted_model(0))
    return circuitfind.discover(model, planted_task(n=6), method="eap", top_n=5, progress=False)


def test_folder_names_follow_mib() -> None:
    assert folder_name("ioi", "gpt2") == "ioi_gpt2"
    assert folder_name("arc_easy", "meta-llama/Llama-3.1-8B") == "arc-easy_llama3"
    assert folder_name("greater-than", "zoo:greater-than") == "greater-than_greater-than"


def test_importances_round_trip(scored, tmp_path) -> None:
    folder = scored.to_mib(tmp_path, task="ioi", model="gpt2")
    assert folder == tmp_path / "ioi_gpt2" and [p.name for p in folder.iterdir()] == [IMPORTANCES]
    raw = json.loads((folder / IMPORTANCES).read_text())
    assert set(raw) >= {"cfg", "nodes", "edges"}
    assert set(raw["cfg"]) >= {"n_layers", "n_heads", "parallel_attn_mlp", "d_model"}
    assert len(raw["edges"]) == scored.graph.n_edges
    assert all(isinstance(e["score"], float) for e in raw["edges"].values())
    assert all(set(v) == {"in_graph"} for v in raw["nodes"].values())
    for where in (folder, tmp_path, folder / IMPORTANCES):  # the folder, its parent, the file
        back = Circuit.from_mib(where)
        ok = scored.graph.valid
        assert torch.equal(back.score_matrix[ok], scored.score_matrix[ok])
        assert torch.equal(back.in_graph, scored.in_graph)
        assert back.meta["mib"]["format"] == "importances"


def test_nine_circuits_at_mibs_sizes_round_trip(scored, tmp_path) -> None:
    folder = scored.to_mib(tmp_path, task="ioi", model="gpt2", circuits=True)
    files = sorted(p.name for p in folder.iterdir())
    assert len(files) == 9 and IMPORTANCES not in files  # one kind of file per folder
    n = scored.graph.n_edges
    for pct in MIB_PERCENTS:
        c = Circuit.from_json(folder / f"circuit_{pct:g}pct.json")
        assert c.n_edges <= int(n * pct / 100)  # at most pct% of the edges
        assert not c.has_scores  # binary membership only
    back = Circuit.from_mib(folder)
    assert back.meta["mib"]["format"] == "circuits" and len(back.meta["mib"]["sizes"]) == 9
    # nested circuits: ranking by the share of circuits keeping an edge gives each back
    for pct in MIB_PERCENTS:
        c = Circuit.from_json(folder / f"circuit_{pct:g}pct.json")
        if c.n_edges:
            kept_share = back.score_matrix[c.in_graph]
            others = back.score_matrix[back.graph.valid & ~c.in_graph]
            assert float(kept_share.min()) >= float(others.max())
    # writing importances afterwards replaces the circuits
    scored.to_mib(tmp_path, task="ioi", model="gpt2")
    assert [p.name for p in folder.iterdir()] == [IMPORTANCES]


def test_a_hand_written_mib_file_is_read(tmp_path) -> None:
    """Written from MIB's README and its example circuits/ioi-eap-ig.json, by hand."""
    graph = graph_from_shape(1, 2)
    nodes = {"input": {"in_graph": True}, "a0.h0": {"in_graph": True}}
    nodes |= {"a0.h1": {"in_graph": False}, "m0": {"in_graph": True}, "logits": {"in_graph": True}}
    edges = {}
    for i, name in enumerate(sorted(graph.edges)):
        edges[name] = {"score": -0.001 * (i + 1), "in_graph": False}
    for name in ("input->a0.h0<v>", "a0.h0->m0", "m0->logits"):
        edges[name] = {"score": 0.5, "in_graph": True}
    folder = tmp_path / "ioi_gpt2"
    folder.mkdir()
    cfg = {"n_layers": 1, "n_heads": 2, "parallel_attn_mlp": False, "d_model": 8}
    text = json.dumps({"cfg": cfg, "nodes": nodes, "edges": edges})
    (folder / "importances.json").write_text(text)
    c = Circuit.from_mib(tmp_path)
    assert sorted(c.edge_names) == ["a0.h0->m0", "input->a0.h0<v>", "m0->logits"]
    assert c.scores["m0->logits"] == 0.5 and len(c.scores) == graph.n_edges
    assert c.nodes == ["input", "a0.h0", "m0", "logits"]


def test_mib_errors_say_what_to_do(scored, tmp_path) -> None:
    (tmp_path / "x_y").mkdir()
    (tmp_path / "x_y" / "importances.pt").write_bytes(b"\x80\x04")
    with pytest.raises(InputError, match="pickles"):
        Circuit.from_mib(tmp_path / "x_y")
    with pytest.raises(InputError, match="no such"):
        Circuit.from_mib(tmp_path / "missing")
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(InputError, match="folder of one task"):
        Circuit.from_mib(empty)
    unscored = scored.with_edges(scored.in_graph)
    unscored.score_matrix = torch.full_like(scored.score_matrix, float("nan"))
    with pytest.raises(InputError, match="no edge scores"):
        unscored.to_mib(tmp_path)
