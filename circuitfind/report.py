"""The HTML report: one self-contained file (no CDN, no external files) that works offline.

It holds the circuit diagram (inline SVG), the faithfulness curve (matplotlib, inline SVG), a
table of the circuit's nodes with role, score and layer, the top edges, the task with three
example prompt pairs, and the command that produced it.
"""

from __future__ import annotations

import html
import io
import logging
import os
import re
import shutil
from pathlib import Path
from typing import TYPE_CHECKING, Any

from circuitfind.graph import parse_node
from circuitfind.roles import ROLE_COLOURS, Role, role_names

if TYPE_CHECKING:
    from circuitfind.circuit import Circuit

__all__ = ["head_scores", "node_scores", "write_report"]

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


def node_scores(circuit: Circuit) -> dict[str, float]:
    """A score for every node of the circuit: its own score when the method gave one, else the
    sum of its in-circuit outgoing edge scores (incoming for ``logits``)."""
    if circuit.node_scores:
        return {n: circuit.node_scores.get(n, float("nan")) for n in circuit.nodes}
    keep = circuit.in_graph
    scores = circuit.score_matrix.nan_to_num(0.0) * keep
    g = circuit.graph
    out: dict[str, float] = {}
    by_sender = scores.sum(1)
    for name in circuit.nodes:
        if name == "logits":
            out[name] = float(scores[:, g.receiver_index["logits"]].sum())
        else:
            out[name] = float(by_sender[g.sender_index[name]])
    return out


def head_scores(circuit: Circuit) -> dict[str, float]:
    """:func:`node_scores` for the attention heads only."""
    return {n: s for n, s in node_scores(circuit).items() if n.startswith("a")}


def _svg_only(svg: str) -> str:
    """An SVG document without its XML prolog and doctype, to inline in HTML."""
    start = svg.find("<svg")
    return svg[start:] if start >= 0 else svg


def _diagram(circuit: Circuit, roles: Any) -> str:
    from circuitfind.render import INSTALL_HINT, _title, dot_source

    dot = dot_source(circuit, roles=roles, title=_title(circuit))
    if shutil.which("dot") is None:
        return (
            f'<p class="note">The diagram needs Graphviz: {html.escape(INSTALL_HINT)}. '
            f"Its DOT source:</p><pre>{html.escape(dot.source)}</pre>"
        )
    svg = dot.pipe(format="svg", quiet=True).decode()
    return _svg_only(svg)


def _curve(circuit: Circuit, evaluation: Any) -> str:
    curve = _get(evaluation, "curve")
    if not curve:
        return '<p class="note">No faithfulness curve (run <code>circuitfind evaluate</code>).</p>'
    import matplotlib

    matplotlib.use("Agg", force=False)
    from matplotlib.figure import Figure

    xs = [float(x) for x, _ in curve]
    ys = [float(y) for _, y in curve]
    fig = Figure(figsize=(6.4, 3.4), dpi=100)
    ax = fig.add_subplot()
    ax.plot(xs, ys, marker="o", markersize=3, color="#1f77b4", label="top-k edges by |score|")
    faith = _get(evaluation, "faithfulness")
    if faith is not None:
        share = 100 * circuit.n_edges / max(1, circuit.graph.n_edges)
        ax.scatter([share], [faith], color="#d62728", zorder=3, label=f"this circuit ({faith:.2f})")
    ax.axhline(1.0, color="#999", lw=0.8, ls="--")
    ax.set_xscale("symlog", linthresh=1.0)
    ax.set_xlim(0, max(100.0, *xs))
    ax.set_xlabel("edges kept (% of all edges)")
    ax.set_ylabel("faithfulness")
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    buf = io.StringIO()
    fig.savefig(buf, format="svg")
    svg = buf.getvalue()
    svg = re.sub(r"<metadata>.*?</metadata>", "", svg, flags=re.S)
    return _svg_only(svg)


def _role_cell(role: Any) -> str:
    if role is None:
        return ""
    name = role.name if isinstance(role, Role) else str(role)
    colour = ROLE_COLOURS.get(name, ROLE_COLOURS["unlabelled"])
    score = f" {role.score:.2f}" if isinstance(role, Role) and name != "unlabelled" else ""
    return f'<span class="role" style="background:{colour}">{html.escape(name)}</span>{score}'


def _fmt(x: Any, digits: int = 4) -> str:
    if x is None:
        return "–"
    if isinstance(x, float):
        return f"{x:.{digits}g}"
    return html.escape(str(x))


def _task_section(task: Any, circuit: Circuit) -> str:
    name = _get(task, "name") or circuit.meta.get("task") or "unknown"
    description = _get(task, "description") or ""
    parts = [f"<p><b>{html.escape(str(name))}</b> {html.escape(str(description))}</p>"]
    prompts = _get(task, "prompts")
    if prompts:
        rows = "".join(
            f"<tr><td>{i + 1}</td><td><code>{html.escape(c)}</code></td>"
            f"<td><code>{html.escape(x)}</code></td></tr>"
            for i, (c, x) in enumerate(prompts[:3])
        )
        parts.append(f"<table><tr><th>#</th><th>clean</th><th>corrupted</th></tr>{rows}</table>")
    elif task is not None and _get(task, "clean") is not None:
        clean, corrupted = task.clean, task.corrupted
        rows = "".join(
            f"<tr><td>{i + 1}</td><td><code>{clean[i].tolist()}</code></td>"
            f"<td><code>{corrupted[i].tolist()}</code></td></tr>"
            for i in range(min(3, clean.shape[0]))
        )
        parts.append(
            f"<table><tr><th>#</th><th>clean (token ids)</th><th>corrupted</th></tr>{rows}</table>"
        )
    return "".join(parts)


def write_report(
    circuit: Circuit,
    path: str | os.PathLike[str],
    *,
    evaluation: Any = None,
    task: Any = None,
    command: str | None = None,
    roles: dict[str, Role] | dict[str, str] | None = None,
    top_edges: int = 20,
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
    if meta.get("time_s") is not None:
        summary.append(f"{float(meta['time_s']):.1f} s")

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

    scores = node_scores(circuit)
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
<h2>Diagram</h2>
<div id="diagram" class="figure">{_diagram(circuit, roles)}</div>
<h2>Faithfulness</h2>
<div id="curve" class="figure">{_curve(circuit, evaluation)}</div>
<table id="metrics"><tr><th>metric</th><th>value</th></tr>{metric_rows}</table>
<h2>Nodes</h2>
<table id="nodes"><tr><th>node</th><th>name</th><th>kind</th><th>layer</th><th>role</th>
<th>score</th></tr>{"".join(node_rows)}</table>
<h2>Top edges</h2>
<table id="edges"><tr><th>#</th><th>edge</th><th>score</th></tr>{edge_rows}</table>
<h2>Task</h2>
<div id="task">{_task_section(task, circuit)}</div>
<h2>Command</h2>
<pre id="command">{html.escape(command or "(not recorded)")}</pre>
{f"<p class='summary'>versions: {html.escape(str(versions))}</p>" if versions else ""}
</body></html>
"""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(doc, encoding="utf-8")
    logger.info("wrote %s", path)
    return path
