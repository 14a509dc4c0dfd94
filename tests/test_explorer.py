"""The explorer's data and server, checked against the engine: the slider's points are the
evaluation's curve (each point's circuit re-measured gives the curve's value), edge opacity is
the bootstrap frequency, DLA and patterns are the model's, live re-evaluation equals
``evaluate`` on the circuit without the node, and the page is one offline file."""

from __future__ import annotations

import json
import re
import threading
import urllib.error
import urllib.request

import pytest
import torch

import circuitfind as cf
from circuitfind.circuit import Circuit, graph_from_shape
from circuitfind.evaluation import curve_sizes
from circuitfind.explorer.data import MAX_DRAWN, build_payload, frequencies_from_file
from circuitfind.explorer.page import explorer_html, write_explorer
from circuitfind.explorer.serve import ExplorerSession, make_server
from circuitfind.pruning import remove_dangling, top_n
from tests.factories import make_hf_model
from tests.test_patching import _random_task


def payload_of(text: str) -> dict:
    """The JSON payload embedded in an explorer page."""
    m = re.search(r'<script type="application/json" id="cf-data">(.*?)</script>', text, re.S)
    assert m is not None
    return json.loads(m.group(1))


@pytest.fixture(scope="module")
def discovered():
    torch.manual_seed(0)
    model = cf.load(make_hf_model("gpt2"))
    task = _random_task(n=6)
    circuit = cf.discover(model, task, method="eap", top_n=12, curve=True, progress=False)
    return model, task, circuit


def test_slider_points_are_the_evaluations_curve(discovered):
    model, task, circuit = discovered
    ev = circuit.meta["evaluation"]
    data = build_payload(circuit)
    curve = [p for p in data["points"] if not p["own"]]
    assert [p["percent"] for p in curve] == [pytest.approx(x) for x, _ in ev["curve_abs"]]
    assert [p["faithfulness"] for p in curve] == [pytest.approx(f) for _, f in ev["curve_abs"]]
    assert [p["stderr"] for p in curve] == [pytest.approx(s) for s in ev["curve_abs_stderr"]]
    own = data["points"][data["initial_point"]]
    assert own["own"] and own["n_edges"] == circuit.n_edges
    assert own["faithfulness"] == pytest.approx(circuit.meta["faithfulness"])
    # each point's circuit, rebuilt by hand and measured again, has the curve's faithfulness
    g = circuit.graph
    scores = circuit.score_matrix.nan_to_num(0.0)
    for p, n in zip(curve, curve_sizes(g.n_edges)):
        mask = remove_dangling(g, top_n(g, scores, n))
        assert p["n_edges"] == int(mask.sum())
        if 0 < p["n_edges"] <= MAX_DRAWN:  # every edge drawn: the drawn set is the circuit
            drawn = {tuple(data["edges"][i][:3]) for i in p["edges"]}
            names = [n["id"] for n in data["nodes"]]
            want = set()
            for s, r in mask.nonzero().tolist():
                recv = g.receivers[r]
                want.add((names.index(g.senders[s].name), names.index(recv.node), recv.qkv or ""))
            assert drawn == want
        again = cf.evaluate(model, task, circuit.with_edges(mask)).faithfulness
        assert again == pytest.approx(p["faithfulness"], abs=1e-5)


def test_edge_scores_and_frequencies_round_trip(discovered, tmp_path):
    _, _, circuit = discovered
    names = circuit.edge_names
    freqs = {name: (k % 5) / 4 for k, name in enumerate(names)}
    data = build_payload(circuit, frequencies=freqs)
    ids = [n["id"] for n in data["nodes"]]
    seen = {}
    for s, r, qkv, score, f in data["edges"]:
        name = f"{ids[s]}->{ids[r]}" + (f"<{qkv}>" if qkv else "")
        assert score == pytest.approx(circuit.scores[name], rel=1e-3, abs=1e-9)
        seen[name] = f
    for name in names:
        assert seen[name] == pytest.approx(freqs[name])
    assert data["has_frequency"]
    # the key read from a circuit file: edges[name]["frequency"]
    raw = circuit.to_dict()
    for name in names:
        raw["edges"][name]["frequency"] = freqs[name]
    path = tmp_path / "circuit.json"
    path.write_text(json.dumps(raw))
    assert frequencies_from_file(path) == pytest.approx(freqs)
    # ... and a circuit without any has none (full opacity)
    assert build_payload(circuit)["has_frequency"] is False
    assert all(e[4] is None for e in build_payload(circuit)["edges"])


def test_dla_and_patterns_are_the_models(discovered):
    model, task, circuit = discovered
    data = build_payload(circuit, model=model, task=task, n_prompts=2)
    n = data["dla_prompts"]
    toward = cf.dla(model, task.clean[:n], task.answer[:n], position=task.readout[:n])
    wrong = cf.dla(model, task.clean[:n], task.wrong[:n], position=task.readout[:n])
    _, cache = model.run_with_cache(task.clean[:2], None, patterns=True)
    for node in data["nodes"]:
        if node["id"] == "logits":
            continue
        a = toward[node["id"]]
        d = a - wrong[node["id"]]
        assert node["dla"]["answer"][0] == pytest.approx(float(a.mean()), rel=1e-3, abs=1e-6)
        assert node["dla"]["diff"][0] == pytest.approx(float(d.mean()), rel=1e-3, abs=1e-6)
        se = float(d.std() / n**0.5)
        assert node["dla"]["diff"][1] == pytest.approx(se, rel=1e-2, abs=1e-6)
        if node["kind"] == "head":
            t = task.clean.shape[1]
            got = torch.zeros(t, t)
            q, k = torch.tril_indices(t, t)
            got[q, k] = torch.tensor(data["patterns"][node["id"]][1], dtype=torch.float)
            want = cache.patterns[node["layer"]][1, node["head"]] * 100
            assert (got - want).abs().max() <= 0.5 + 1e-4  # the upper triangle is 0 (causal)
    assert [p["readout"] for p in data["prompts"]] == task.readout[:2].tolist()


def test_page_is_one_offline_file(discovered, tmp_path):
    model, task, circuit = discovered
    path = write_explorer(circuit, tmp_path / "explorer.html", model=model, task=task)
    text = path.read_text()
    assert text.startswith("<!DOCTYPE html>")
    assert not re.search(r'(src|href)\s*=\s*["\']?(https?:)?//', text)
    assert "<script src" not in text and "@import" not in text and "<link" not in text
    assert payload_of(text)["meta"]["method"] == "eap"
    # data that looks like markup cannot end the script element
    evil = explorer_html({"x": "</script><b>"}, "t")
    assert "</script><b>" not in evil and payload_of(evil) == {"x": "</script><b>"}


def test_size_of_a_gpt2_small_circuit_without_model():
    """32k edges (GPT-2 small's graph): the page stays small (only drawn edges are sent)."""
    g = graph_from_shape(12, 12)
    gen = torch.Generator().manual_seed(0)
    scores = torch.randn(g.n_senders, g.n_receivers, generator=gen)
    assert g.n_edges > 32_000
    keep = remove_dangling(g, top_n(g, scores, 400))
    curve = [(p, min(1.0, p / 10)) for p in (0.1, 0.2, 0.5, 1, 2, 5, 10, 20, 50, 100)]
    ev = {"faithfulness": 0.9, "faithfulness_stderr": 0.01, "curve_abs": curve,
          "curve_abs_stderr": [0.01] * 10}  # fmt: skip
    circuit = Circuit(g, scores, keep, {"score_orientation": -1.0, "evaluation": ev})
    text = explorer_html(build_payload(circuit), "gpt2-small")
    assert len(text.encode()) < 1_500_000, len(text)


def test_live_evaluation_equals_evaluate_without_the_node(discovered):
    model, task, circuit = discovered
    session = ExplorerSession(circuit, model, task)
    own = next(k for k, p in enumerate(session.points) if p.own)
    node = next(n for n in circuit.nodes if n.startswith("a"))
    g = circuit.graph
    mask = circuit.in_graph.clone()
    mask[g.sender_index[node], :] = False
    for r in g.receivers:
        if r.node == node:
            mask[:, r.index] = False
    want = cf.evaluate(model, task, circuit.with_edges(mask))
    got = session.evaluate(own, [g.nodes[node].label])  # any spelling: L0H1
    assert got["faithfulness"] == pytest.approx(want.faithfulness, abs=1e-6)
    assert got["faithfulness_stderr"] == pytest.approx(want.faithfulness_stderr, rel=1e-3)
    assert got["n_edges"] == int(mask.sum())
    edge = circuit.edge_names[0]
    one = circuit.in_graph.clone()
    e = g.edges[edge]
    one[e.sender_index, e.receiver_index] = False
    got = session.evaluate(own, [], [edge])
    assert got["faithfulness"] == pytest.approx(
        cf.evaluate(model, task, circuit.with_edges(one)).faithfulness, abs=1e-6
    )
    # over HTTP, and a bad name is a 400 naming it
    server = make_server(session, port=0)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        url = f"http://127.0.0.1:{server.server_port}"
        page = urllib.request.urlopen(url + "/").read().decode()
        assert payload_of(page)["serve"] is True
        req = urllib.request.Request(
            url + "/api/evaluate",
            data=json.dumps({"point": own, "ablate_edges": [edge]}).encode(),
            method="POST",
        )
        body = json.loads(urllib.request.urlopen(req).read())
        assert body["faithfulness"] == pytest.approx(got["faithfulness"])
        bad = urllib.request.Request(
            url + "/api/evaluate", data=b'{"ablate_nodes": ["nonsense"]}', method="POST"
        )
        with pytest.raises(urllib.error.HTTPError) as err:
            urllib.request.urlopen(bad)
        assert err.value.code == 400 and "nonsense" in json.loads(err.value.read())["error"]
    finally:
        server.shutdown()
        server.server_close()


@pytest.mark.slow
def test_size_of_a_gpt2_small_explorer_with_the_model(tmp_path):
    """GPT-2 small's shape (random weights, 12 x 12, 32k edges), with prompts, patterns and
    DLA: the page stays under 3 MB."""
    from transformers import GPT2Config, GPT2LMHeadModel

    from tests.test_patching import VOCAB

    torch.manual_seed(0)
    hf = GPT2LMHeadModel(GPT2Config(vocab_size=max(VOCAB, 1000))).eval()
    hf.config._attn_implementation = "eager"
    model = cf.load(hf)
    task = _random_task(n=8, T=32)
    circuit = cf.discover(model, task, method="eap", top_n=2000, progress=False)
    assert circuit.graph.n_edges > 32_000
    # A size test: the file's size depends on which edges each slider point keeps (its
    # masks), not on the faithfulness numbers, so a constant curve stands in for the measured
    # one (20 masked runs of GPT-2 small take minutes on two cores; other tests measure it).
    pcts = (0.1, 0.2, 0.5, 1, 2, 5, 10, 20, 50, 100)
    circuit.meta["evaluation"] = {
        **circuit.meta["evaluation"],
        "curve_abs": [(p, 0.5) for p in pcts],
        "curve_abs_stderr": [0.1] * len(pcts),
    }
    path = write_explorer(circuit, tmp_path / "explorer.html", model=model, task=task)
    size = path.stat().st_size
    data = payload_of(path.read_text())
    print(f"gpt2-small explorer: {size / 1e6:.2f} MB, {len(data['edges'])} edges sent, "
          f"{len(data['nodes'])} nodes, {len(data['patterns'])} attention patterns")  # fmt: skip
    assert size < 3_000_000


def test_static_diagram_dashes_only_edges_that_hurt_the_task():
    """An induction-like circuit: every important edge has a negative score (ablating it lowers
    a higher-is-better metric). Drawn solid, as helping, whether the orientation comes from
    ``score_orientation`` or only from the saved evaluation's metrics; with no way to tell,
    nothing is dashed."""
    from circuitfind.render import HURTS_STYLE, dot_source

    g = graph_from_shape(2, 4)
    scores = torch.zeros(g.n_senders, g.n_receivers)
    keep = torch.zeros_like(g.valid)
    edges = {"input->a0.h3<q>": -0.4, "a0.h3->a1.h0<k>": -2.0, "input->a1.h0<v>": -0.8,
             "a1.h0->logits": -3.0, "input->a1.h0<q>": 0.2}  # fmt: skip
    for name, score in edges.items():
        e = g.edges[name]
        scores[e.sender_index, e.receiver_index] = score
        keep[e.sender_index, e.receiver_index] = True
    ev = {"metric_full": 4.0, "metric_empty": -1.0}
    for meta in ({"score_orientation": -1.0}, {"evaluation": ev}, {}):
        source = dot_source(Circuit(g, scores, keep, dict(meta))).source
        dashed = re.findall(rf'tooltip="([^:"]+):[^"]*"[^\]]*style={HURTS_STYLE}', source)
        dashed += re.findall(rf'style={HURTS_STYLE}[^\]]*tooltip="([^:"]+):', source)
        if meta:
            assert dashed == ["input->a1.h0<q>"], meta  # the one edge that hurts
            assert "hurts the task" in source
        else:
            assert dashed == [] and "does not record which" in source


def test_report_links_the_explorer(tmp_path):
    from circuitfind.report import write_report

    g = graph_from_shape(1, 1)
    circuit = Circuit(g, torch.zeros(g.n_senders, g.n_receivers), g.valid.clone(), {})
    text = write_report(circuit, tmp_path / "report.html", explorer="explorer.html").read_text()
    assert '<a href="explorer.html">' in text
    assert "explorer" not in write_report(circuit, tmp_path / "r2.html").read_text().lower()


@pytest.mark.slow
def test_serve_command_answers_on_localhost(tmp_path):
    """``circuitfind serve DIR`` with the model and task the circuit records: its page and its
    endpoint answer, and the circuit as it is gets its saved faithfulness back."""
    import os
    import signal
    import subprocess
    import sys
    from pathlib import Path

    model = cf.load("zoo:induction-2l")
    task = cf.get_task("induction", model, n=16)
    circuit = cf.discover(model, task, method="eap", curve=True, progress=False)
    circuit.meta["model"] = "zoo:induction-2l"
    circuit.to_json(tmp_path / "circuit.json")
    root = str(Path(__file__).resolve().parents[1])
    env = {**os.environ, "PYTHONPATH": root}
    proc = subprocess.Popen(
        [sys.executable, "-m", "circuitfind", "serve", str(tmp_path), "--port", "0"],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
        env=env,
    )
    try:
        line = proc.stdout.readline()
        url = re.search(r"http://[\d.]+:\d+/", line).group(0)
        assert payload_of(urllib.request.urlopen(url).read().decode())["serve"] is True
        points = json.loads(urllib.request.urlopen(url + "api/points").read())
        own = next(k for k, p in enumerate(points) if p["label"] == "this circuit")
        req = urllib.request.Request(
            url + "api/evaluate", data=json.dumps({"point": own}).encode(), method="POST"
        )
        body = json.loads(urllib.request.urlopen(req).read())
        assert body["faithfulness"] == pytest.approx(circuit.meta["faithfulness"], abs=1e-5)
    finally:
        proc.send_signal(signal.SIGINT)
        proc.wait(timeout=30)
