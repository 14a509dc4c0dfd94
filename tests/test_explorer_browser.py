"""The explorer in a real headless browser (Debian's chromium + chromium-driver, Selenium): click
a node, move the slider, group heads, reopen a link, ablate live; a screenshot goes to
reports/explorer.png. The default tier runs one short test where Chromium is installed; the
slow tier runs them all (scripts/test.sh --slow)."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest
import torch

from circuitfind.circuit import Circuit, graph_from_shape
from circuitfind.explorer.page import write_explorer
from circuitfind.render import MIN_OPACITY
from tests.browser import REASON, start
from tests.browser import errors as _errors

REPORTS = Path(__file__).resolve().parents[1] / "reports"

pytestmark = pytest.mark.skipif(REASON is not None, reason=REASON or "")


@pytest.fixture(scope="module")
def browser():
    driver = start()
    yield driver
    driver.quit()


def _toy_circuit() -> Circuit:
    graph = graph_from_shape(2, 2)
    scores = torch.zeros(graph.n_senders, graph.n_receivers)
    keep = torch.zeros_like(graph.valid)
    edges = {"input->a0.h1<q>": -0.5, "a0.h1->a1.h0<v>": -2.0, "input->a1.h0<k>": 0.3,
             "a1.h0->logits": -1.5, "input->m0": -0.2, "m0->logits": -0.1}  # fmt: skip
    for name, score in edges.items():
        e = graph.edges[name]
        scores[e.sender_index, e.receiver_index] = score
        keep[e.sender_index, e.receiver_index] = True
    ev = {"faithfulness": 0.93, "faithfulness_stderr": 0.02,
          "curve_abs": [(1, 0.0), (5, 0.6), (10, 0.95), (100, 1.0)],
          "curve_abs_stderr": [0.0, 0.05, 0.02, 0.0]}  # fmt: skip
    meta = {"model": "toy", "task": "ioi", "method": "eap", "score_orientation": -1.0,
            "evaluation": ev, "roles": {"a0.h1": {"role": "previous-token", "score": 0.8},
                                        "a1.h0": {"role": "name-mover", "score": 0.7}}}  # fmt: skip
    return Circuit(graph, scores, keep, meta)


def test_click_a_node_and_move_the_slider(browser, tmp_path):
    """The short default-tier test: a node click opens its panel, the slider changes the
    circuit and its faithfulness, the state is in the URL."""
    from selenium.webdriver.common.by import By

    circuit = _toy_circuit()
    path = write_explorer(circuit, tmp_path / "explorer.html")
    browser.get(path.as_uri())
    assert not _errors(browser)
    label = browser.find_element(By.ID, "size-label")
    assert float(label.get_attribute("data-faithfulness")) == pytest.approx(0.93)
    assert label.get_attribute("data-n-edges") == str(circuit.n_edges)
    browser.find_element(By.CSS_SELECTOR, '[data-node="a1.h0"] rect').click()
    assert "L1H0" in browser.find_element(By.ID, "panel-title").text
    assert "node=a1.h0" in browser.execute_script("return location.hash")
    # helping edges solid, hurting dashed: the one positive score hurts (orientation -1)
    hurts = browser.find_elements(By.CSS_SELECTOR, '[data-helps="false"]')
    assert [e.get_attribute("data-edge") for e in hurts] == ["input->a1.h0<k>"]
    assert hurts[0].get_attribute("stroke-dasharray")
    # the slider: move to the smallest point
    browser.execute_script(
        "const s = document.getElementById('size'); s.value = 0;"
        "s.dispatchEvent(new Event('input'));"
    )
    points = browser.execute_script("return window.cfExplorer.data.points")
    assert label.get_attribute("data-n-edges") == str(points[0]["n_edges"])
    assert "p=0" in browser.execute_script("return location.hash")
    assert not _errors(browser)


# ------------------------------------------------------------------ slow: a real model
@pytest.fixture(scope="module")
def ioi_run(tmp_path_factory):
    import circuitfind as cf
    from circuitfind.roles import detect_roles

    model = cf.load("zoo:ioi")
    task = cf.get_task("ioi", model, n=48)
    circuit = cf.discover(model, task, method="eap-ig-inputs", curve=True, progress=False)
    heads = [n for n in circuit.nodes if n.startswith("a")]
    roles = detect_roles(model, task, heads=heads)
    freqs = {name: round(0.3 + 0.7 * (k % 4) / 3, 3) for k, name in enumerate(circuit.edge_names)}
    out = tmp_path_factory.mktemp("explorer")
    path = write_explorer(
        circuit, out / "explorer.html", model=model, task=task, roles=roles, frequencies=freqs
    )
    return model, task, circuit, roles, freqs, path


@pytest.mark.slow
def test_the_full_explorer_on_zoo_ioi(browser, ioi_run):
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.by import By

    _, task, circuit, roles, freqs, path = ioi_run
    browser.get(path.as_uri())
    assert not _errors(browser)
    data = browser.execute_script("return window.cfExplorer.data")
    # edges: opacity is the bootstrap frequency
    drawn = browser.find_elements(By.CSS_SELECTOR, "path.edge")
    assert drawn
    for e in drawn:
        name = e.get_attribute("data-edge")
        expected = max(MIN_OPACITY, freqs[name])  # never-kept edges stay visible
        assert float(e.get_attribute("stroke-opacity")) == pytest.approx(expected, abs=1e-3)
    # hover a head: its role and top edges
    head = max((n for n in circuit.nodes if n.startswith("a")), key=lambda n: n)
    node = browser.find_element(By.CSS_SELECTOR, f'[data-node="{head}"] rect')
    ActionChains(browser).move_to_element(node).perform()
    tip = browser.find_element(By.ID, "tip").text
    assert roles[head].name in tip and "top incoming" in tip
    # click it: DLA toward answer and wrong, attention heatmaps over the prompts
    node.click()
    panel = browser.find_element(By.ID, "panel").text
    assert "toward the answer" in panel and "toward the wrong answer" in panel
    assert len(browser.find_elements(By.CSS_SELECTOR, "#panel svg.heat")) == len(data["prompts"])
    # the token view marks the readout position of each prompt
    marked = browser.find_elements(By.CSS_SELECTOR, ".prompt .tok.readout")
    assert [int(t.get_attribute("data-pos")) for t in marked] == task.readout[:3].tolist()
    # every slider point shows its size and measured faithfulness
    label = browser.find_element(By.ID, "size-label")
    for k, p in enumerate(data["points"]):
        browser.execute_script(
            f"const s = document.getElementById('size'); s.value = {k};"
            "s.dispatchEvent(new Event('input'));"
        )
        assert label.get_attribute("data-n-edges") == str(p["n_edges"])
        f = label.get_attribute("data-faithfulness")
        assert (f == "" and p["faithfulness"] is None) or float(f) == pytest.approx(
            p["faithfulness"]
        )
        shown = len(browser.find_elements(By.CSS_SELECTOR, "path.edge"))
        assert shown == len(p["edges"])
    # grouping heads by role into supernodes and back
    own = data["initial_point"]
    browser.execute_script(
        f"const s = document.getElementById('size'); s.value = {own};"
        "s.dispatchEvent(new Event('input'));"
    )
    n_before = len(browser.find_elements(By.CSS_SELECTOR, "g.node"))
    browser.find_element(By.ID, "group").click()
    supers = browser.find_elements(By.CSS_SELECTOR, "g.node.super")
    by_group = {}
    for h in (n for n in circuit.nodes if n.startswith("a")):
        key = (circuit.graph.nodes[h].layer, roles[h].name)
        by_group[key] = by_group.get(key, 0) + 1
    assert len(supers) == sum(1 for v in by_group.values() if v > 1)
    assert len(browser.find_elements(By.CSS_SELECTOR, "g.node")) == n_before - sum(
        v - 1 for v in by_group.values()
    )
    assert "group=1" in browser.execute_script("return location.hash")
    # the link reopens the same view
    link = browser.current_url
    browser.get("about:blank")
    browser.get(link)
    assert browser.find_element(By.ID, "group").is_selected()
    assert browser.execute_script("return window.cfExplorer.state.point") == own
    browser.find_element(By.ID, "group").click()
    assert len(browser.find_elements(By.CSS_SELECTOR, "g.node")) == n_before
    # screenshot: a head selected, its attention shading the prompts
    browser.get(path.as_uri() + f"#p={own}&node={head}")
    time.sleep(0.3)
    assert head in browser.find_element(By.ID, "panel-title").text
    REPORTS.mkdir(exist_ok=True)
    browser.save_screenshot(str(REPORTS / "explorer.png"))
    assert (REPORTS / "explorer.png").stat().st_size > 10_000
    assert not _errors(browser)


@pytest.mark.slow
def test_serve_ablates_a_node_live(browser, ioi_run):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    from circuitfind.explorer.serve import ExplorerSession, make_server

    model, task, circuit, roles, _, _ = ioi_run
    session = ExplorerSession(circuit, model, task, roles=roles)
    server = make_server(session, port=0)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        own = next(k for k, p in enumerate(session.points) if p.own)
        head = next(n for n in circuit.nodes if n.startswith("a"))
        browser.get(f"http://127.0.0.1:{server.server_port}/#p={own}&node={head}")
        browser.find_element(By.ID, "toggle-node").click()
        live = WebDriverWait(browser, 60).until(
            lambda d: d.find_element(By.ID, "live").get_attribute("data-faithfulness")
        )
        want = session.evaluate(own, [head])["faithfulness"]
        assert float(live) == pytest.approx(want, abs=1e-9)
        assert "ablated" in browser.find_element(
            By.CSS_SELECTOR, f'[data-node="{head}"]'
        ).get_attribute("class")
        assert f"off={head}" in browser.execute_script("return location.hash")
        assert not _errors(browser)
    finally:
        server.shutdown()
        server.server_close()
