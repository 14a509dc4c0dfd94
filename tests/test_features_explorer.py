"""The feature-graph explorer on zoo:induction-2l's graph of a repeated-token prompt: the page's
data is the graph's (its pruned nodes and edges, every other slider point the graph re-pruned,
each feature's examples ``top_examples``' own), the page is one offline file, the CLI writes it,
and in headless Chromium a click on a feature shows its top example and a hover its activation.

The transcoders are trained briefly (200 steps, 64 features a site): the page only has to show
what the graph holds, and a short training already gives the induction graph's shape (features
at the last position reading the token after the earlier copy)."""

from __future__ import annotations

import re
from urllib.parse import quote

import pytest
import torch

import circuitfind as cf
from circuitfind.errors import InputError
from circuitfind.features import (
    attribution_graph,
    build_feature_payload,
    feature_explorer_html,
    train_transcoders,
    write_feature_explorer,
)
from circuitfind.features.examples import top_examples
from circuitfind.inspect.sae import evaluation_data
from tests import browser as chromium
from tests.test_explorer import payload_of

pytestmark = pytest.mark.usefixtures("one_thread")

K = 4  # examples a feature


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    model = cf.load("zoo:induction-2l")
    tcs = train_transcoders(model, sites="auto", steps=200, d_sae=64, k=8, n=256, lr=1e-2, seed=0)
    seq = torch.randperm(128, generator=torch.Generator().manual_seed(0))[:10]
    prompt = torch.cat([seq, seq[:5]])  # positions 10-14 repeat 0-4: the answer is token 5
    graph = attribution_graph(model, tcs, prompt)
    payload = build_feature_payload(graph, model=model, transcoders=tcs, k=K)
    torch.set_num_threads(before)
    return model, tcs, prompt, graph, payload


def _approx(x: float) -> object:
    return pytest.approx(x, rel=1e-6, abs=1e-6)


def _at(payload: dict, point: dict) -> tuple[list[dict], list[tuple[str, str, float]]]:
    nodes = [payload["nodes"][i] for i in point["nodes"]]
    edges = []
    for j in point["edges"]:
        s, t, w = payload["edges"][j]
        edges.append((payload["nodes"][s]["id"], payload["nodes"][t]["id"], w))
    return nodes, edges


def test_nodes_and_edges_are_the_pruned_graphs(setup):
    _, _, prompt, graph, payload = setup
    assert graph.target["pos"] == 14 and graph.target["token"] == int(prompt[5])
    own = payload["points"][payload["initial_point"]]
    assert own["own"] and own["node_threshold"] == 0.8 and own["edge_threshold"] == 0.98
    want = graph.to_dict()  # the pruned graph
    nodes, edges = _at(payload, own)
    assert [n["id"] for n in nodes] == [n["id"] for n in want["nodes"]]
    assert any(n["kind"] == "feature" for n in nodes) and len(want["edges"]) > 3
    pr = graph.pruning
    logit = graph.logit_index
    for n, w in zip(nodes, want["nodes"]):
        i = graph.index(n["id"])
        assert (n["kind"], n["layer"], n["pos"], n["site"], n["feature"]) == (
            w["kind"], w["layer"], w["pos"], w["site"], w["feature"])  # fmt: skip
        assert n["activation"] == _approx(w["activation"])
        assert n["influence"] == _approx(float(pr.influence[i]))
        if n["kind"] != "logit":
            assert n["direct"] == _approx(float(graph.adjacency[logit, i]))
    got = {(s, t): w for s, t, w in edges}
    assert len(got) == len(edges) == len(want["edges"])
    for e in want["edges"]:
        assert got[(e["source"], e["target"])] == _approx(e["weight"])
    # every other stop is the graph pruned at its node threshold
    assert len(payload["points"]) == 6
    for point in payload["points"]:
        ref = graph.pruned(point["node_threshold"], 0.98)
        nodes, edges = _at(payload, point)
        assert {n["id"] for n in nodes} == {
            graph.nodes[i].id for i in ref.node_mask.nonzero().flatten().tolist()
        }
        keep = ref.edge_mask & (graph.adjacency != 0)
        keep &= ref.node_mask[:, None] & ref.node_mask[None, :]
        assert {(s, t) for s, t, _ in edges} == {
            (graph.nodes[s].id, graph.nodes[t].id) for t, s in keep.nonzero().tolist()
        }
    sizes = [len(p["nodes"]) for p in payload["points"]]
    assert sizes == sorted(sizes)  # a higher threshold keeps more


def test_positions_rows_and_tokens(setup):
    _, _, prompt, graph, payload = setup
    assert payload["tokens"] == [f"t{int(t)}" for t in prompt]  # the zoo's tokenizer
    rows = [r["key"] for r in payload["rows"]]
    assert rows == ["embed", "a0", "a1", "logit"]  # sites without a node shown are left out
    for n in payload["nodes"]:
        nd = graph.nodes[graph.index(n["id"])]
        assert n["pos"] == nd.pos
        key = {"token": "embed", "logit": "logit"}.get(nd.kind, nd.site)
        assert rows[n["row"]] == key
        if nd.kind == "feature":
            assert n["key"] == f"{nd.site}.f{nd.feature}"
    logit = next(n for n in payload["nodes"] if n["kind"] == "logit")
    assert logit["pos"] == 14 and logit["activation"] == _approx(graph.target["value"])
    assert payload["target"]["token_str"] == f"t{int(prompt[5])}"


def test_examples_are_top_examples_of_the_training_data(setup):
    model, tcs, _, graph, payload = setup
    shown = {n["key"] for n in payload["nodes"] if n["kind"] == "feature"}
    data = evaluation_data(model, n=256, seed=0)  # what train_transcoders drew
    assert payload["meta"]["examples_source"] == data.source
    feats: dict[str, list[int]] = {}
    for key in sorted(shown):
        site, f = key.split(".f")
        feats.setdefault(site, []).append(int(f))
    want = top_examples(model, tcs, data, features=feats, k=K)
    expected = {f"{s}.f{f}": rows for s, per in want.items() for f, rows in per.items()}
    assert set(payload["examples"]) == set(expected) and expected
    for key, rows in expected.items():
        got = payload["examples"][key]
        assert len(got) == len(rows) == K
        for g, w in zip(got, rows):
            assert (g["row"], g["pos"], g["token"], g["context"]) == (
                w["row"], w["pos"], w["token"], w["context"])  # fmt: skip
            assert g["activation"] == _approx(w["activation"])
            assert g["context"][-1] == g["token"]  # the context ends at the activating token
        acts = [g["activation"] for g in got]
        assert acts == sorted(acts, reverse=True)
    # examples given are used as they are
    given = {"a1": {7: [{"row": 0, "pos": 1, "activation": 2.5, "context": ["a"], "token": "a"}]}}
    assert build_feature_payload(graph, examples=given)["examples"] == {"a1.f7": given["a1"][7]}


def test_edge_and_node_caps(setup):
    graph = setup[3]
    capped = build_feature_payload(graph, max_edges=3, max_nodes=22)
    own = capped["points"][capped["initial_point"]]
    want = graph.to_dict()["edges"]
    strongest = sorted((abs(e["weight"]) for e in want), reverse=True)[:3]
    _, edges = _at(capped, own)
    assert sorted((abs(w) for *_, w in edges), reverse=True) == [_approx(x) for x in strongest]
    assert own["left_out"] == len(want) - 3
    assert all(len(p["nodes"]) <= 22 or p["own"] for p in capped["points"])
    assert capped["examples"] == {} and not capped["meta"]["examples"]
    with pytest.raises(InputError, match="node thresholds"):
        build_feature_payload(graph, node_thresholds=[1.5])


def test_page_is_one_small_offline_file(setup, tmp_path):
    graph, payload = setup[3], setup[4]
    text = feature_explorer_html(payload, "induction")
    assert text.startswith("<!DOCTYPE html>")
    assert not re.search(r'(src|href)\s*=\s*["\']?(https?:)?//', text)
    assert "<script src" not in text and "@import" not in text and "<link" not in text
    assert payload_of(text) == payload
    # the shared pieces once; nothing of the component explorer's own script
    assert text.count("window.cfCommon = (function") == 1
    assert "window.cfFeatures" in text and "group heads by role" not in text
    path = write_feature_explorer(graph, tmp_path / "f.html", examples={})
    assert payload_of(path.read_text())["nodes"] == payload["nodes"]
    assert len(text.encode()) < 80_000, len(text)


def test_cli_writes_the_explorer_beside_the_graph(setup, tmp_path, capsys):
    from circuitfind.cli import main

    _, tcs, prompt, _, _ = setup
    tcs.save(tmp_path / "tc")
    args = ["features", "graph", "--model", "zoo:induction-2l", "--transcoders",
            str(tmp_path / "tc"), "--tokens", ",".join(str(int(t)) for t in prompt),
            "--check", "0", "--examples", str(K)]  # fmt: skip
    assert main([*args, "--out", str(tmp_path / "out" / "g.json")]) == 0
    page = tmp_path / "out" / "feature_explorer.html"
    assert f"explorer: {page}" in capsys.readouterr().out
    data = payload_of(page.read_text())
    assert data["examples"] == setup[4]["examples"]
    assert [n["id"] for n in data["nodes"]] == [n["id"] for n in setup[4]["nodes"]]
    assert main([*args, "--neuronpedia", str(tmp_path / "np" / "np.json"), "--no-explorer"]) == 0
    assert not (tmp_path / "np" / "feature_explorer.html").exists()
    assert "explorer:" not in capsys.readouterr().out


@pytest.mark.skipif(chromium.REASON is not None, reason=chromium.REASON or "")
def test_in_a_browser_click_shows_examples_and_hover_the_activation(setup, tmp_path):
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.by import By

    payload = setup[4]
    path = tmp_path / "feature_explorer.html"
    path.write_text(feature_explorer_html(payload, "induction"))
    driver = chromium.start()
    try:
        driver.get(path.as_uri())
        assert not chromium.errors(driver)
        own = payload["points"][payload["initial_point"]]
        shown, _ = _at(payload, own)
        label = driver.find_element(By.ID, "size-label")
        assert label.get_attribute("data-n-nodes") == str(len(shown))
        feature = max((n for n in shown if n["kind"] == "feature"), key=lambda n: n["influence"])
        node = driver.find_element(By.CSS_SELECTOR, f'[data-node="{feature["id"]}"]')
        # hover: the tooltip shows its activation
        ActionChains(driver).move_to_element(node).perform()
        tip = driver.find_element(By.ID, "tip")
        assert tip.is_displayed()
        content = driver.find_element(By.CSS_SELECTOR, "#tip-content")
        assert content.get_attribute("data-node") == feature["id"]
        assert float(content.get_attribute("data-activation")) == _approx(feature["activation"])
        assert f"activation: {feature['activation']:.4g}" in tip.text
        # click: the panel shows its top example, the activating token marked
        node.click()
        assert feature["label"] in driver.find_element(By.ID, "panel-title").text
        top = payload["examples"][feature["key"]][0]
        first = driver.find_element(By.CSS_SELECTOR, '#examples .example[data-rank="0"]')
        tokens = [t.text for t in first.find_elements(By.CSS_SELECTOR, ".tok")]
        assert tokens == top["context"]
        assert first.find_element(By.CSS_SELECTOR, ".act-tok").text == top["token"]
        assert float(first.get_attribute("data-activation")) == _approx(top["activation"])
        incoming = driver.find_elements(By.CSS_SELECTOR, "#edges-in .edgerow")
        assert incoming
        assert f"node={quote(feature['id'], safe='')}" in driver.execute_script(
            "return location.hash"
        )
        # a token's node sits in its column, under its token
        for pos in (5, 14):
            box = driver.find_element(By.CSS_SELECTOR, f'[data-node="tok@{pos}"]').rect
            col = driver.find_element(By.CSS_SELECTOR, f'[data-col="{pos}"]')
            assert col.text == payload["tokens"][pos]
            assert abs(box["x"] + box["width"] / 2 - (col.rect["x"] + col.rect["width"] / 2)) < 2
        # the slider re-prunes
        driver.execute_script(
            "const s = document.getElementById('size'); s.value = 0;"
            "s.dispatchEvent(new Event('input'));"
        )
        assert label.get_attribute("data-n-nodes") == str(len(payload["points"][0]["nodes"]))
        assert len(driver.find_elements(By.CSS_SELECTOR, ".fnode[data-node]")) == len(
            payload["points"][0]["nodes"]
        )
        assert not chromium.errors(driver)
    finally:
        driver.quit()
