"""GPT-2 small's published circuits (IOI, Greater-Than) as edge sets, and the ``gpt2`` suite.

The circuits are data files (``circuitfind/data/gpt2_ioi.json``, ``gpt2_greater_than.json``) with
their sources. :func:`reference_edges` turns one into an ``[S, R]`` edge set on a GPT-2-small
graph. The suite scores each method's edges against them (ROC AUC, next to ACDC's published
values) when the user has GPT-2's weights (``--model gpt2`` from the HF cache, or a directory);
without them it skips with a message and never fails.
"""

from __future__ import annotations

import json
import logging
import os
from functools import partial
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from circuitfind.bench.common import Report, fmt, md_table, stamp, timed
from circuitfind.graph import Graph, parse_node

__all__ = ["CIRCUITS", "load_reference", "reference_edges", "reference_nodes", "run"]

logger = logging.getLogger(__name__)

DATA_DIR = Path(__file__).resolve().parent.parent / "data"
CIRCUITS = {"ioi": "gpt2_ioi.json", "greater-than": "gpt2_greater_than.json"}
ENV_MODEL = "CIRCUITFIND_GPT2"  # where the suite looks for GPT-2 when --model is not given
FULL_METHODS = ("eap", "eap-ig-inputs", "eap-ig-activations", "node")
QUICK_METHODS = ("eap",)


def load_reference(name: str) -> dict[str, Any]:
    """The reference circuit NAME (``ioi`` or ``greater-than``) as stored, sources included."""
    if name not in CIRCUITS:
        raise KeyError(f"no reference circuit {name!r}; known: {', '.join(CIRCUITS)}")
    text = (DATA_DIR / CIRCUITS[name]).read_text()
    return dict(json.loads(text))


def _layer(node: str) -> int:
    return int(node[1:].split(".")[0])


def reference_nodes(ref: dict[str, Any], graph: Graph | None = None) -> set[str]:
    """Canonical names of the circuit's heads and MLPs."""
    cfg = graph.cfg if graph is not None else None
    if "classes" in ref:
        return {parse_node(h, cfg) for heads in ref["classes"].values() for h in heads}
    return {parse_node(h, cfg) for h in ref["heads"]} | {f"m{m}" for m in ref["mlps"]}


def reference_edges(ref: dict[str, Any], graph: Graph) -> Tensor:
    """[S, R] bool: the reference circuit's edges on ``graph`` (see each file's ``note``)."""
    out = torch.zeros(graph.n_senders, graph.n_receivers, dtype=torch.bool)

    def add(name: str) -> None:
        e = graph.edges.get(name)
        if e is not None:  # senders after their receiver are no edge
            out[e.sender_index, e.receiver_index] = True

    if "classes" in ref:
        classes = {
            cls: [parse_node(h, graph.cfg) for h in heads] for cls, heads in ref["classes"].items()
        }

        def members(spec: str | list[str]) -> list[str]:
            names = [spec] if isinstance(spec, str) else spec
            return [h for n in names for h in classes[n]]

        for wire in ref["wiring"]:
            senders = members(wire["from"])
            if wire["to"] == "logits":
                for s in senders:
                    add(f"{s}->logits")
                continue
            for s in senders:
                for r in members(wire["to"]):
                    if _layer(s) < _layer(r):
                        for qkv in wire["inputs"]:
                            add(f"{s}->{r}<{qkv}>")
        return out
    if ref.get("wiring") != "induced":
        raise ValueError(f"unknown wiring {ref.get('wiring')!r}")
    nodes = reference_nodes(ref, graph)
    for e in graph.edges.values():
        s_ok = e.sender == "input" or e.sender in nodes
        r_ok = e.receiver == "logits" or e.receiver in nodes
        if s_ok and r_ok:
            out[e.sender_index, e.receiver_index] = True
    return out


def _skip_report(out_dir: Path, message: str, seed: int, quick: bool) -> dict[str, Any]:
    """Write the skip notice, unless a report with real results is already there."""
    js = out_dir / "gpt2_reference.json"
    if js.is_file():
        try:
            if "skipped" not in json.loads(js.read_text()):
                return {"skipped": message, "files": {}}
        except ValueError:
            pass
    report = Report("gpt2_reference", "GPT-2 small reference circuits", stamp(seed, quick))
    report.data["skipped"] = message
    report.add(f"**Skipped:** {message}", "")
    report.add(*_reference_summary())
    return {"skipped": message, "files": report.write(out_dir)}


def _reference_summary() -> list[str]:
    from circuitfind.circuit import graph_from_shape

    graph = graph_from_shape(12, 12)
    rows = []
    for name in CIRCUITS:
        ref = load_reference(name)
        pub = ref["published"]
        rows.append(
            [
                name,
                len(reference_nodes(ref, graph)),
                int(reference_edges(ref, graph).sum()),
                graph.n_edges,
                pub["acdc_ground_truth_edges"],
                pub["acdc_graph_edges"],
                pub["acdc_roc_auc"],
            ]
        )
    return [
        "Reference circuits (`circuitfind/data/`; sources in each file). Edges on circuitfind's "
        "GPT-2-small graph vs ACDC's published ground truth on its own graph:",
        "",
        *md_table(
            [
                "circuit",
                "nodes",
                "our edges",
                "our graph",
                "ACDC edges",
                "ACDC graph",
                "ACDC ROC AUC (published)",
            ],
            rows,
        ),
    ]


def run(out_dir: Path, *, quick: bool, seed: int, model: str | None = None) -> dict[str, Any]:
    """Score the methods on GPT-2 small's reference circuits; skip when there are no weights."""
    import circuitfind
    from circuitfind.bench.known import score_circuit
    from circuitfind.errors import CircuitfindError

    source = model or os.environ.get(ENV_MODEL)
    if not source:
        return _skip_report(
            out_dir,
            "GPT-2 small's weights were not given. Run `circuitfind benchmark --suite gpt2 "
            f"--model gpt2` (from the HF cache) or `--model /path/to/gpt2`, or set {ENV_MODEL}",
            seed,
            quick,
        )
    try:
        m = circuitfind.load(source)
    except (CircuitfindError, OSError, ValueError) as exc:
        return _skip_report(out_dir, f"could not load GPT-2 from {source!r}: {exc}", seed, quick)
    graph = Graph.from_model(m)
    if (m.cfg.family, m.cfg.n_layers, m.cfg.n_heads) != ("gpt2", 12, 12):
        return _skip_report(
            out_dir,
            f"{source!r} is a {m.cfg.family} with {m.cfg.n_layers} x {m.cfg.n_heads} heads, "
            "not GPT-2 small (gpt2, 12 x 12)",
            seed,
            quick,
        )
    methods = QUICK_METHODS if quick else FULL_METHODS
    n = 16 if quick else 64
    report = Report("gpt2_reference", "GPT-2 small reference circuits", stamp(seed, quick))
    report.add(*_reference_summary())
    results: dict[str, Any] = {}
    for name in CIRCUITS:
        ref = load_reference(name)
        edges = reference_edges(ref, graph)
        nodes = reference_nodes(ref, graph)
        task_out = timed(partial(circuitfind.get_task, name, m, n=n, seed=seed))
        rows = []
        if not task_out.ok:
            rows.append({"method": "-", "status": "failed", "error": task_out.error})
        else:
            task = task_out.value
            for method in methods:
                out = timed(
                    partial(
                        circuitfind.discover,
                        m,
                        task,
                        method=method,
                        ablation="resample",
                        top_n=int(edges.sum()),
                        progress=False,
                        seed=seed,
                    ),
                    what=f"{name}/{method}",
                )
                row: dict[str, Any] = {"method": method, **out.to_dict()}
                if out.value is not None:
                    row.update(score_circuit(out.value, edges, nodes))
                rows.append(row)
        results[name] = {"rows": rows, "published": ref["published"]}
        report.add(
            f"## {name} ({n} prompts, resample ablation, the task's own metric)",
            "",
            *md_table(
                [
                    "method",
                    "edge ROC AUC",
                    "ACDC (published)",
                    "node ROC AUC",
                    "R@k",
                    "s",
                    "status",
                ],
                [
                    [
                        r["method"],
                        r.get("edge_auc"),
                        ref["published"]["acdc_roc_auc"],
                        r.get("node_auc"),
                        r.get("edge_recall_at_k"),
                        r.get("seconds"),
                        str(r["status"]) + (f": {r['error']}" if r.get("error") else ""),
                    ]
                    for r in rows
                ],
            ),
        )
    if quick:
        report.add(f"--quick ran {', '.join(methods)} only, on {n} prompts.", "")
    report.data["results"] = results
    files = report.write(out_dir)
    return {
        "files": files,
        "edge_auc": {
            k: {r["method"]: fmt(r.get("edge_auc")) for r in v["rows"]} for k, v in results.items()
        },
    }
