"""The HTML report: self-contained, with every section; and how a person sees it (Chromium)."""

from __future__ import annotations

import html
import json
import re
import shutil
import subprocess
from dataclasses import dataclass

import pytest

from circuitfind.circuit import Circuit
from circuitfind.render import EDGE_COLOURS
from circuitfind.report import head_totals, node_totals_of, write_report
from circuitfind.roles import ROLE_COLOURS, Role
from tests.test_render import EDGES, small_circuit

EVALUATION = {
    "faithfulness": 0.87,
    "metric_full": 2.1,
    "metric_circuit": 1.8,
    "metric_empty": 0.1,
    "curve": [(0.1, 0.05), (1.0, 0.3), (3.0, 0.7), (10.0, 0.9), (100.0, 1.0)],
    "cpr": 0.8,
    "cmd": 0.1,
}


@dataclass
class TextTask:
    name: str = "ioi"
    description: str = "indirect object identification"
    prompts: list | None = None


def _task() -> TextTask:
    return TextTask(
        prompts=[
            (f"When Mary and John went out, John gave it to {i}", f"When A and B went, C gave {i}")
            for i in range(5)
        ]
    )


def _write(tmp_path, **kw):
    return write_report(
        small_circuit(),
        tmp_path / "report.html",
        evaluation=kw.pop("evaluation", EVALUATION),
        task=kw.pop("task", _task()),
        command="circuitfind discover --model zoo:toy --task ioi --out x",
        roles={"a0.h1": Role("a0.h1", "previous-token", 0.91), "a1.h0": "name-mover"},
        **kw,
    )


def test_report_has_every_section_and_is_self_contained(tmp_path):
    text = _write(tmp_path).read_text()
    assert text.startswith("<!DOCTYPE html>")
    for section in ('id="diagram"', 'id="curve"', 'id="nodes"', 'id="edges"', 'id="task"'):
        assert section in text
    # nothing is fetched: no scripts, stylesheets, images or fonts from elsewhere
    assert not re.search(r'(src|href)="(https?:)?//', text)
    assert "<script" not in text and "@import" not in text
    # two inline SVGs when dot exists (diagram + curve), the curve always
    assert text.count("<svg") == (2 if shutil.which("dot") else 1)
    assert "circuitfind discover --model zoo:toy --task ioi --out x" in text
    # three example prompt pairs, not more
    assert text.count("When Mary and John") == 3
    # node table: every node, with labels, roles and scores
    for label in ("L0H1", "L1H0", "MLP0", "input", "logits"):
        assert f"<td>{label}</td>" in text
    assert "previous-token</span> 0.91" in text and "name-mover</span>" in text
    # top edges: every edge of this small circuit, the largest first
    edges = re.findall(r"<td><code>([^<]+)</code></td>\s*<td class='num'>", text)
    edges = [e for e in map(html.unescape, edges) if "->" in e]
    assert edges[0] == "a0.h1->a1.h0<v>" and set(edges) == set(EDGES)
    assert "0.870" in text  # faithfulness


def test_report_without_evaluation_or_task_still_renders(tmp_path):
    path = write_report(small_circuit(), tmp_path / "r.html")
    text = path.read_text()
    assert "No faithfulness curve" in text and 'id="nodes"' in text


def test_node_scores_sum_outgoing_edges():
    c = small_circuit()
    scores = node_totals_of(c)
    assert scores["a0.h1"] == pytest.approx(EDGES["a0.h1->a1.h0<v>"] + EDGES["a0.h1->a1.h0<k>"])
    assert scores["logits"] == pytest.approx(EDGES["a1.h0->logits"] + EDGES["m0->logits"])
    assert set(head_totals(c)) == {"a0.h1", "a1.h0"}


def _chromium() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("dot") is None, reason="graphviz `dot` not installed")
def test_report_as_a_person_sees_it(tmp_path):
    """Open the report in headless Chromium (Debian package `chromium`, an optional extra:
    `apt-get install chromium`), screenshot it, and check the diagram is drawn and large."""
    browser = _chromium()
    if browser is None:
        pytest.skip("chromium is not installed (optional extra: apt-get install chromium)")
    from PIL import Image

    report = _write(tmp_path)
    shot = tmp_path / "shot.png"
    cmd = [
        browser,
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--hide-scrollbars",
        "--window-size=1200,1600",
        f"--screenshot={shot}",
        report.as_uri(),
    ]
    subprocess.run(cmd, check=True, capture_output=True, timeout=120)
    image = Image.open(shot).convert("RGB")
    assert image.size == (1200, 1600)
    pixels = image.load()

    def where(colour: str, tolerance: int = 12) -> tuple[list[int], list[int]]:
        target = tuple(int(colour[i : i + 2], 16) for i in (1, 3, 5))
        xs, ys = [], []
        for y in range(0, image.size[1], 2):
            for x in range(0, image.size[0], 2):
                if sum(abs(a - b) for a, b in zip(pixels[x, y], target)) < tolerance:
                    xs.append(x)
                    ys.append(y)
        return xs, ys

    # the role-coloured head boxes are drawn (the curve uses none of these colours)
    xs, ys = where(ROLE_COLOURS["previous-token"])
    assert len(xs) > 100, "the previous-token head's box is not visible"
    xs, ys = where(ROLE_COLOURS["name-mover"])
    assert len(xs) > 100, "the name-mover head's box is not visible"
    # the value edges (green) run from layer 0 up to layer 1: the drawing has real height
    xs, ys = where(EDGE_COLOURS["v"], tolerance=30)
    assert len(xs) > 50 and max(ys) - min(ys) > 80, "the diagram is missing or tiny"


# ------------------------------------------------- the figure and tables say what they show
def _curve_of(text: str) -> dict:
    m = re.search(r'data-curve="([^"]*)"', text)
    assert m, "no curve data in the report"
    return json.loads(html.unescape(m.group(1)))


def _on_line(point: tuple[float, float], line: list) -> bool:
    return any(abs(x - point[0]) < 1e-9 and abs(y - point[1]) < 1e-9 for x, y in line)


def _pruned(rule: dict) -> Circuit:
    c = small_circuit()
    c.meta.update({"pruning": rule, "score_orientation": 1.0})
    return c


def test_the_curve_is_the_ranking_the_circuit_was_pruned_by_and_the_dot_is_on_it(tmp_path):
    total = small_circuit().graph.n_edges
    evaluation = {
        **EVALUATION,
        "faithfulness": 0.92,
        "curve_abs": [(1.0, 0.1), (10.0, 0.6), (50.0, 0.97), (100.0, 1.0)],
        "curve": [(1.0, 0.05), (10.0, 0.5), (50.0, 0.5), (100.0, 1.0)],  # IOI-like: differs
    }
    c = _pruned({"rule": "top-n", "n": 8})
    text = write_report(c, tmp_path / "r.html", evaluation=evaluation).read_text()
    data = _curve_of(text)
    lines = {line["ranking"]: line for line in data["lines"]}
    assert list(lines) == ["abs", "signed"]
    assert "|score|" in lines["abs"]["label"] and "pruned by" in lines["abs"]["label"]
    assert "signed" in lines["signed"]["label"] and "CPR" in lines["signed"]["label"]
    dot = data["dot"]
    assert dot["line"] == "abs" and dot["x"] == pytest.approx(100 * 8 / total)
    assert dot["y"] == 0.92 and _on_line((dot["x"], dot["y"]), lines["abs"]["points"])
    assert [tuple(p) for p in lines["signed"]["points"]] == evaluation["curve"]
    for x, y in evaluation["curve_abs"]:  # the measured points are all still there
        assert _on_line((x, y), lines["abs"]["points"])
    # the legend of the picture carries the same labels
    assert "pruned by" in text and "this circuit (0.92)" in text


def test_one_line_when_both_rankings_agree_and_no_false_dot_for_acdc(tmp_path):
    same = [(1.0, 0.2), (10.0, 0.8), (100.0, 1.0)]
    evaluation = {**EVALUATION, "curve_abs": same, "curve": same}
    c = _pruned({"rule": "threshold", "threshold": 1.0})
    data = _curve_of(write_report(c, tmp_path / "a.html", evaluation=evaluation).read_text())
    assert [line["ranking"] for line in data["lines"]] == ["abs"]
    n = int((c.score_matrix[c.graph.valid].abs() >= 1.0).sum())
    assert data["dot"]["x"] == pytest.approx(100 * n / c.graph.n_edges)
    assert _on_line((data["dot"]["x"], data["dot"]["y"]), data["lines"][0]["points"])
    acdc = _pruned({"rule": "acdc", "tau": 0.01})
    data = _curve_of(write_report(acdc, tmp_path / "b.html", evaluation=evaluation).read_text())
    assert data["dot"]["line"] is None and "ACDC" in data["dot"]["label"]
    assert "pruned by" not in data["lines"][0]["label"]


@dataclass
class MetricStub:
    name: str = "logprob"
    description: str = "log p(answer)"
    higher_is_better: bool = True


class WordTokenizer:
    def decode(self, ids):
        return " ".join(f"w{i}" for i in ids)


def test_report_names_the_metric_answers_node_scores_and_time_per_phase(tmp_path):
    import torch

    task = _task()
    task.answer = torch.tensor([[3, -1], [4, 5], [6, -1], [7, -1], [8, -1]])  # type: ignore[attr-defined]
    task.wrong = torch.tensor([9, 10, 11, 12, 13])  # type: ignore[attr-defined]
    task.metric = MetricStub()  # type: ignore[attr-defined]
    c = small_circuit()
    c.meta["timing"] = {"scoring_s": 4.0, "pruning_s": 6.0, "evaluation_s": 1.5}
    text = write_report(
        c, tmp_path / "r.html", evaluation=EVALUATION, task=task, tokenizer=WordTokenizer()
    ).read_text()
    assert "metric: logprob: log p(answer), higher is better" in text
    assert "<th>answer</th><th>wrong</th>" in text
    assert html.escape("'w4' | 'w5'") in text and html.escape("'w9'") in text
    assert "sum of its in-circuit outgoing edges" in text
    assert "time 11.5 s (scoring 4.0, pruning 6.0, evaluation 1.5)" in text
    assert "The diagram shows all 8 edges of the circuit." in text
    # without a tokenizer the ids are shown
    text = write_report(c, tmp_path / "ids.html", task=task).read_text()
    assert "<code>4 | 5</code>" in text


def test_a_big_circuits_report_says_what_the_diagram_leaves_out(tmp_path):
    from tests.test_render import _big_circuit

    text = write_report(_big_circuit(400), tmp_path / "big.html").read_text()
    assert "shows the 150 strongest of the circuit&#x27;s 400 edges" in text
    assert "250 are left out" in text
