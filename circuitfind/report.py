"""The HTML report: one self-contained file (no CDN, no external files) that works offline.

It holds the circuit diagram (inline SVG; what it shows said above it), the faithfulness curve
of the ranking the circuit was pruned by (edges by |score|), and where it differs the signed
(MIB CPR) curve, both labelled, with the circuit's own point on its line (the plotted numbers
are also in the curve's ``data-curve`` attribute, as JSON); the metric by name and direction; a
table of the circuit's nodes with role, layer and what their score sums; the top edges; the
task with three example prompt pairs and their answer and wrong tokens; the time per phase;
and the command that produced it.
"""

from __future__ import annotations

import html
import io
import json
import logging
import math
import os
import re
import shutil
from pathlib import Path
from typing import TYPE_CHECKING, Any

from circuitfind.names import parse_node
from circuitfind.report_stability import stability_sections
from circuitfind.roles import ROLE_COLOURS, Role, role_names
from circuitfind.scores import node_totals

if TYPE_CHECKING:
    from circuitfind.circuit import Circuit

__all__ = ["head_totals", "node_totals_of", "write_report"]

logger = logging.getLogger(__name__)

_CSS = """
body { font-family: -apple-system, "Segoe UI", Helvetica, Arial, sans-serif; margin: 2em auto;
       max-width: 1100px; color: #222; line-height: 1.45; padding: 0 1em; }
h1 { font-size: 1.6em; margin-bottom: 0.2em; } h2 { font-size: 1.2em; margin-top: 1.8em;
     border-bottom: 1px solid #ddd; padding-bottom: 0.2em; }
.summary { color: #555; } .summary b { color: #222; }
table { border-collapse: collapse; font-size: 0.9em; } td, th { padding: 3px 10px;
        border-bottom: 1px solid #eee; text-align: left; } th { background: #f6f6f6; }
td.num { text-align: right; font-variant-numeric: tabular-nums; }
.role { padding: 1px 6px; border-radius: 8px; border: 1px solid #ccc; }
pre { background: #f6f6f6; padding: 0.7em; overflow-x: auto; font-size: 0.85em; }
#diagram svg { max-width: 100%; height: auto; } .figure { margin: 1em 0; }
.note { color: #a33; }
"""


def _get(obj: Any, key: str, default: Any = None) -> Any:
    if obj is None:
        return default
    if isinstance(obj, dict):
        return obj.get(key, default)
    return getattr(obj, key, default)


def node_totals_of(circuit: Circuit) -> dict[str, float]:
    """A score for every node of the circuit: its own score when the method gave one, else the
    sum of its in-circuit outgoing edge scores (incoming for ``logits``)."""
    if circuit.node_scores:
        return {n: circuit.node_scores.get(n, float("nan")) for n in circuit.nodes}
    totals = node_totals(circuit.graph, circuit.score_matrix, keep=circuit.in_graph)
    return {name: totals[name] for name in circuit.nodes}


def head_totals(circuit: Circuit) -> dict[str, float]:
    """:func:`node_scores` for the attention heads only."""
    return {n: s for n, s in node_totals_of(circuit).items() if n.startswith("a")}


def _svg_only(svg: str) -> str:
    """An SVG document without its XML prolog and doctype, to inline in HTML."""
    start = svg.find("<svg")
    return svg[start:] if start >= 0 else svg


def _diagram(circuit: Circuit, roles: Any) -> str:
    from circuitfind.render import (
        INSTALL_HINT,
        MAX_EDGES,
        _title,
        dot_source,
        drawn_edges,
        helpfulness_sign,
    )

    dot = dot_source(circuit, roles=roles, title=_title(circuit))
    _, left_out = drawn_edges(circuit, MAX_EDGES)
    if left_out:
        shows = (
            f"The diagram shows the {circuit.n_edges - left_out} strongest of the circuit's "
            f"{circuit.n_edges} edges (by |score|); {left_out} are left out (every edge is in "
            "circuit.json and the tables below rank them)."
        )
    else:
        shows = f"The diagram shows all {circuit.n_edges} edges of the circuit."
    if helpfulness_sign(circuit) is not None:
        shows += (
            " Solid edges help the task (ablating one moves the metric toward the empty "
            "circuit's), dashed ones hurt it; width grows with |score|."
        )
    else:
        shows += (
            " Every edge is drawn solid: this circuit does not record which score sign helps "
            "the task (the tooltips give the signed scores)."
        )
    note = f'<p class="summary" id="diagram-note">{html.escape(shows)}</p>'
    if shutil.which("dot") is None:
        return (
            f'{note}<p class="note">The diagram needs Graphviz: {html.escape(INSTALL_HINT)}. '
            f"Its DOT source:</p><pre>{html.escape(dot.source)}</pre>"
        )
    svg = dot.pipe(format="svg", quiet=True).decode()
    return note + _svg_only(svg)


_FROM_RANKING = {"top-n", "threshold", "target-faithfulness"}


def _ranked_count(circuit: Circuit) -> int | None:
    """How many top-|score| edges the pruning took (before edges off every input-to-logits
    path were dropped): the x of the circuit on the |score| curve; None when the circuit was
    not chosen from that ranking (ACDC, greedy growth)."""
    pruning = circuit.meta.get("pruning") or {}
    rule = pruning.get("rule")
    if rule not in _FROM_RANKING:
        return None
    if isinstance(pruning.get("n"), int):
        return int(pruning["n"])
    if rule == "threshold" and isinstance(pruning.get("threshold"), (int, float)):
        scores = circuit.score_matrix[circuit.graph.valid].abs()
        return int((scores >= float(pruning["threshold"])).sum())
    return None


def curve_data(circuit: Circuit, evaluation: Any) -> dict[str, Any] | None:
    """What the faithfulness figure plots: ``{"lines": [{"ranking", "label", "points"}],
    "dot": {"x", "y", "label", "line"}}``, or None without a curve.

    The first line is the ranking the circuit was pruned by (top-k by |score|: ``curve_abs``),
    with the circuit's own measured point inserted where it was chosen from that ranking (its
    x is the share of edges the pruning took, as the curve's points are); the second, where it
    differs, the signed ranking (top-k by helpfulness, MIB's CPR curve)."""
    signed = [(float(x), float(y)) for x, y in (_get(evaluation, "curve") or [])]
    by_abs = [(float(x), float(y)) for x, y in (_get(evaluation, "curve_abs") or [])]
    if not signed and not by_abs:
        return None
    faith = _get(evaluation, "faithfulness")
    total = max(1, circuit.graph.n_edges)
    lines: list[dict[str, Any]] = []
    dot: dict[str, Any] | None = None
    if by_abs:
        ranked = _ranked_count(circuit)
        points = list(by_abs)
        x_ranked: float | None = None
        if faith is not None and ranked is not None and math.isfinite(float(faith)):
            x_ranked = 100.0 * ranked / total
            points = [p for p in points if abs(p[0] - x_ranked) > 1e-12]
            points = sorted([*points, (x_ranked, float(faith))])
        on_line = x_ranked is not None
        lines.append(
            {
                "ranking": "abs",
                "label": "top-k edges by |score| (the ranking this circuit was pruned by)"
                if on_line or ranked is not None
                else "top-k edges by |score|",
                "points": points,
            }
        )
        differs = len(signed) != len(by_abs) or any(
            abs(a[1] - b[1]) > 1e-9 for a, b in zip(signed, by_abs)
        )
        if signed and differs:
            lines.append(
                {
                    "ranking": "signed",
                    "label": "top-k edges by helpfulness (signed score; MIB's CPR curve)",
                    "points": signed,
                }
            )
        if faith is not None and math.isfinite(float(faith)):
            rule = (circuit.meta.get("pruning") or {}).get("rule")
            if x_ranked is not None:
                x = x_ranked
                label = f"this circuit ({float(faith):.2f})"
            else:
                x = 100.0 * circuit.n_edges / total
                how = {"acdc": "ACDC", "greedy": "greedy growth"}.get(str(rule), "another rule")
                label = f"this circuit ({float(faith):.2f}; chosen by {how}, not by this ranking)"
            dot = {"x": x, "y": float(faith), "label": label, "line": "abs" if on_line else None}
    else:  # an evaluation with only the signed curve
        lines.append(
            {
                "ranking": "signed",
                "label": "top-k edges by helpfulness (signed score; MIB's CPR curve)",
                "points": signed,
            }
        )
        if faith is not None and math.isfinite(float(faith)):
            x = 100.0 * circuit.n_edges / total
            dot = {"x": x, "y": float(faith), "label": f"this circuit ({float(faith):.2f})",
                   "line": None}  # fmt: skip
    return {"lines": lines, "dot": dot}


def _curve(circuit: Circuit, evaluation: Any) -> str:
    data = curve_data(circuit, evaluation)
    if data is None:
        return '<p class="note">No faithfulness curve (run <code>circuitfind evaluate</code>).</p>'
    import matplotlib

    matplotlib.use("Agg", force=False)
    from matplotlib.figure import Figure

    fig = Figure(figsize=(6.4, 3.4), dpi=100)
    ax = fig.add_subplot()
    styles = {"abs": ("#1f77b4", "-"), "signed": ("#9467bd", "--")}
    biggest = 100.0
    for line in data["lines"]:
        xs = [x for x, _ in line["points"]]
        ys = [y for _, y in line["points"]]
        biggest = max(biggest, *xs)
        colour, dash = styles[line["ranking"]]
        ax.plot(xs, ys, marker="o", markersize=3, color=colour, ls=dash, label=line["label"])
    dot = data["dot"]
    if dot is not None:
        ax.scatter([dot["x"]], [dot["y"]], color="#d62728", zorder=3, label=dot["label"])
    ax.axhline(1.0, color="#999", lw=0.8, ls="--")
    ax.set_xscale("symlog", linthresh=1.0)
    ax.set_xlim(0, biggest)
    ax.set_xlabel("edges kept (% of all edges)")
    ax.set_ylabel("faithfulness")
    ax.grid(alpha=0.3)
    ax.legend(loc="upper left", fontsize=7)  # the curves start low on the left
    fig.tight_layout()
    buf = io.StringIO()
    fig.savefig(buf, format="svg")
    svg = buf.getvalue()
    svg = re.sub(r"<metadata>.*?</metadata>", "", svg, flags=re.S)
    payload = html.escape(json.dumps(data), quote=True)
    return f'<div id="curve-figure" data-curve="{payload}">{_svg_only(svg)}</div>'


def _role_cell(role: Any) -> str:
    if role is None:
        return ""
    name = role.name if isinstance(role, Role) else str(role)
    colour = ROLE_COLOURS.get(name, ROLE_COLOURS["unlabelled"])
    score = f" {role.score:.2f}" if isinstance(role, Role) and name != "unlabelled" else ""
    cell = f'<span class="role" style="background:{colour}">{html.escape(name)}</span>{score}'
    if isinstance(role, Role) and role.note:
        flag = "by pattern only" if role.by_pattern_only else "confirmed by the circuit"
        cell += f' <span class="caveat" title="{html.escape(role.note)}">({flag})</span>'
    return cell


def _fmt(x: Any, digits: int = 4) -> str:
    if x is None:
        return "–"
    if isinstance(x, float):
        return f"{x:.{digits}g}"
    return html.escape(str(x))


def _token_text(tokenizer: Any, ids: Any) -> str:
    """An answer cell: the token(s) as text when there is a tokenizer, else their ids."""
    values = ids.tolist() if hasattr(ids, "tolist") else ids
    if not isinstance(values, list):
        values = [values]
    flat = [int(i) for i in values if int(i) >= 0]  # -1 pads a row of a set of answers
    if not flat:
        return "–"
    if tokenizer is not None:
        try:
            return " | ".join(repr(tokenizer.decode([i])) for i in flat)
        except Exception:  # a tokenizer that cannot decode an id: show the id
            pass
    return " | ".join(str(i) for i in flat)


def _task_section(task: Any, circuit: Circuit, tokenizer: Any = None) -> str:
    name = _get(task, "name") or circuit.meta.get("task") or "unknown"
    description = _get(task, "description") or ""
    parts = [f"<p><b>{html.escape(str(name))}</b> {html.escape(str(description))}</p>"]
    prompts = _get(task, "prompts")
    answer, wrong = _get(task, "answer"), _get(task, "wrong")

    def answers(i: int) -> str:
        if answer is None:
            return ""
        cells = f"<td><code>{html.escape(_token_text(tokenizer, answer[i]))}</code></td>"
        if wrong is not None:
            cells += f"<td><code>{html.escape(_token_text(tokenizer, wrong[i]))}</code></td>"
        return cells

    heads = ""
    if answer is not None:
        heads = "<th>answer</th>" + ("<th>wrong</th>" if wrong is not None else "")
    if prompts:
        rows = "".join(
            f"<tr><td>{i + 1}</td><td><code>{html.escape(c)}</code></td>"
            f"<td><code>{html.escape(x)}</code></td>{answers(i)}</tr>"
            for i, (c, x) in enumerate(prompts[:3])
        )
        parts.append(
            f"<table><tr><th>#</th><th>clean</th><th>corrupted</th>{heads}</tr>{rows}</table>"
        )
    elif task is not None and _get(task, "clean") is not None:
        clean, corrupted = task.clean, task.corrupted
        rows = "".join(
            f"<tr><td>{i + 1}</td><td><code>{clean[i].tolist()}</code></td>"
            f"<td><code>{corrupted[i].tolist()}</code></td>{answers(i)}</tr>"
            for i in range(min(3, clean.shape[0]))
        )
        parts.append(
            "<table><tr><th>#</th><th>clean (token ids)</th><th>corrupted</th>"
            f"{heads}</tr>{rows}</table>"
        )
    return "".join(parts)


def metric_description(circuit: Circuit, task: Any = None) -> str:
    """The metric the numbers are in, by name and direction (``logprob: log p(answer), higher
    is better``)."""
    metric = _get(task, "metric")
    name = _get(metric, "name") or circuit.meta.get("metric_name")
    if not name or name == "metric":
        return "the task's metric"
    what = _get(metric, "description") or {
        "logit_diff": "logit(answer) - logit(wrong)",
        "logprob": "log p(answer)",
        "prob_diff": "p(answer set) - p(wrong set)",
        "kl": "KL(clean || run) at the readout",
        "accuracy": "fraction of prompts where the answer beats the wrong answer",
    }.get(str(name), "")
    higher = _get(metric, "higher_is_better")
    if higher is None:
        higher = name != "kl"
    direction = "higher is better" if higher else "lower is better"
    return f"{name}: {what}, {direction}" if what else f"{name}, {direction}"


def timing_text(meta: dict[str, Any]) -> str | None:
    """``total 12.3 s: scoring 4.1, pruning 6.0, ...`` from the run's per-phase times."""
    phases = meta.get("cli_timing") or meta.get("timing")
    if not isinstance(phases, dict) or not phases:
        scoring, total = meta.get("scoring_time_s"), meta.get("time_s")
        if isinstance(scoring, (int, float)) and isinstance(total, (int, float)):
            phases = {"scoring_s": scoring, "pruning_s": max(0.0, total - scoring)}
        elif isinstance(total, (int, float)):
            phases = {"discover_s": total}
        else:
            return None
    parts = {k: float(v) for k, v in phases.items() if isinstance(v, (int, float))}
    total = parts.pop("total_s", sum(parts.values()))
    body = ", ".join(f"{k.removesuffix('_s')} {v:.1f}" for k, v in parts.items())
    return f"{total:.1f} s ({body})"


def _explorer_link(href: str | None) -> str:
    if not href:
        return ""
    return (
        f'<p id="explorer-link"><a href="{html.escape(href, quote=True)}">Open the interactive '
        "explorer</a>: hover and click nodes, change the circuit's size, group heads by role.</p>\n"
    )


def write_report(
    circuit: Circuit,
    path: str | os.PathLike[str],
    *,
    evaluation: Any = None,
    task: Any = None,
    command: str | None = None,
    roles: dict[str, Role] | dict[str, str] | None = None,
    top_edges: int = 20,
    tokenizer: Any = None,
    explorer: str | None = None,
) -> Path:
    """Write the circuit's HTML report to ``path`` (one self-contained, offline file).

    Args:
        circuit: the circuit.
        path: where to write (``report.html``).
        evaluation: an ``Evaluation`` (or its ``to_dict()``) for the faithfulness curve.
        task: the task, for its description and three example prompt pairs.
        command: the command line that produced the circuit.
        roles: ``{head: Role or role name}`` for the node table and the diagram colours.
        top_edges: how many edges to list.
        tokenizer: to show the example prompts' answer and wrong tokens as text (ids without).
        explorer: a relative link to the circuit's interactive explorer (``explorer.html``).
    """
    path = Path(path)
    meta = circuit.meta
    names = role_names(roles)
    role_objs: dict[str, Any] = {parse_node(h): r for h, r in (roles or {}).items()}

    faith = _get(evaluation, "faithfulness", meta.get("faithfulness"))
    share = 100 * circuit.n_edges / max(1, circuit.graph.n_edges)
    title = " · ".join(str(meta[k]) for k in ("model", "task", "method") if meta.get(k))
    summary = [
        f"<b>{circuit.n_edges}</b> of {circuit.graph.n_edges} edges ({share:.1f}%)",
        f"<b>{len(circuit.nodes)}</b> nodes",
    ]
    if faith is not None:
        summary.append(f"faithfulness <b>{float(faith):.3f}</b>")
    for key in ("ablation", "n_prompts", "seed"):
        if meta.get(key) is not None:
            summary.append(f"{key.replace('_', ' ')} {html.escape(str(meta[key]))}")
    time_text = timing_text(meta)
    if time_text:
        summary.append(f"time {html.escape(time_text)}")

    metrics = {
        "full model": _get(evaluation, "metric_full", (meta.get("metrics") or {}).get("full")),
        "circuit": _get(evaluation, "metric_circuit", (meta.get("metrics") or {}).get("circuit")),
        "empty circuit": _get(evaluation, "metric_empty", (meta.get("metrics") or {}).get("empty")),
    }
    metric_rows = "".join(
        f"<tr><td>{k}</td><td class='num'>{_fmt(v)}</td></tr>"
        for k, v in metrics.items()
        if v is not None
    )
    for key in ("cpr", "cmd"):
        value = _get(evaluation, key)
        if value is not None:
            metric_rows += f"<tr><td>{key.upper()}</td><td class='num'>{_fmt(value)}</td></tr>"

    scores = node_totals_of(circuit)
    if circuit.node_scores:
        score_head = "score (the node's own, from ablating it)"
    else:
        score_head = "score (sum of its in-circuit outgoing edges' scores; incoming for logits)"
    node_rows = []
    for name in circuit.nodes:
        node = circuit.graph.nodes[name]
        head_role = role_objs.get(name, names.get(name)) if node.kind == "head" else None
        node_rows.append(
            f"<tr><td>{html.escape(node.label)}</td><td><code>{name}</code></td>"
            f"<td>{node.kind}</td><td class='num'>{'' if node.layer is None else node.layer}</td>"
            f"<td>{_role_cell(head_role)}</td><td class='num'>{_fmt(scores.get(name))}</td></tr>"
        )
    edge_rows = "".join(
        f"<tr><td class='num'>{i + 1}</td><td><code>{html.escape(e)}</code></td>"
        f"<td class='num'>{_fmt(s)}</td></tr>"
        for i, (e, s) in enumerate(circuit.top_edges(top_edges))
    )
    versions = meta.get("versions")
    command = command or meta.get("command")

    doc = f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<title>circuitfind report{": " + html.escape(title) if title else ""}</title>
<style>{_CSS}</style></head>
<body>
<h1>Circuit{": " + html.escape(title) if title else ""}</h1>
<p class="summary">{" · ".join(summary)}</p>
{_explorer_link(explorer)}<h2>Diagram</h2>
<div id="diagram" class="figure">{_diagram(circuit, roles)}</div>
<h2>Faithfulness</h2>
<div id="curve" class="figure">{_curve(circuit, evaluation)}</div>
<p class="summary" id="metric-name">metric: {html.escape(metric_description(circuit, task))}</p>
<table id="metrics"><tr><th>metric</th><th>value</th></tr>{metric_rows}</table>
<h2>Nodes</h2>
<table id="nodes"><tr><th>node</th><th>name</th><th>kind</th><th>layer</th><th>role</th>
<th>{html.escape(score_head)}</th></tr>{"".join(node_rows)}</table>
<h2>Top edges</h2>
<table id="edges"><tr><th>#</th><th>edge</th><th>score</th></tr>{edge_rows}</table>
{stability_sections(meta, set(circuit.edge_names))}<h2>Task</h2>
<div id="task">{_task_section(task, circuit, tokenizer)}</div>
<h2>Command</h2>
<pre id="command">{html.escape(command or "(not recorded)")}</pre>
{f"<p class='summary'>versions: {html.escape(str(versions))}</p>" if versions else ""}
</body></html>
"""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(doc, encoding="utf-8")
    logger.info("wrote %s", path)
    return path
