"""Known-circuit recovery: does each method find a circuit whose edges are known independently?

Two cases:

- the planted model (``circuitfind.bench.planted``): the circuit is known by construction, and
  exact patching of every other edge is exactly zero;
- the zoo induction model: the previous-token -> induction circuit, found at run time from the
  attention patterns (previous-token and induction scores on repeated random tokens) and confirmed
  by zero-ablating each head (it must cost induction accuracy). No head ids are written here.

For every method x ablation: edge and node ROC AUC of |score| against the reference, precision
and recall at the natural threshold (|score| above ``REL_EPS`` of the largest; ACDC: its own kept
set), and recall among the top-k edges (k = the reference's size).
"""

from __future__ import annotations

import logging
from functools import partial
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from circuitfind.bench.common import Report, fmt, md_table, stamp, timed
from circuitfind.graph import Graph

__all__ = ["REL_EPS", "induction_reference", "recovery", "run"]

logger = logging.getLogger(__name__)

REL_EPS = 0.01  # natural threshold: |score| > REL_EPS * max |score|
ALL_METHODS = ("exact", "acdc", "eap", "eap-ig-inputs", "eap-ig-activations", "node")
ALL_ABLATIONS = ("resample", "mean", "zero")
# prev-token / induction attention scores a head must reach to count (on repeated tokens)
PATTERN_MIN = 0.3
# ... and the drop in induction accuracy its zero-ablation must cause
ABLATION_MIN = 0.05


# ---------------------------------------------------------------------------- scoring
def _node_names(graph: Graph) -> list[str]:
    return [n.name for n in graph.senders if n.kind in ("head", "mlp")]


def node_scores_from_edges(graph: Graph, scores: Tensor) -> dict[str, float]:
    """A node's score: the largest |score| of the edges into (q, k, v) or out of it."""
    s = scores.abs().nan_to_num(0.0)
    s = torch.where(graph.valid, s, torch.zeros_like(s))
    out_max = s.max(dim=1).values  # per sender
    in_max: dict[str, float] = {}
    for r in graph.receivers:
        in_max[r.node] = max(in_max.get(r.node, 0.0), float(s[:, r.index].max()))
    return {
        name: max(float(out_max[graph.sender_index[name]]), in_max.get(name, 0.0))
        for name in _node_names(graph)
    }


def _auc(pos: list[float], neg: list[float]) -> float:
    from circuitfind.evaluation import roc_auc

    if not pos or not neg:
        return float("nan")
    s = torch.tensor(pos + neg)
    y = torch.tensor([True] * len(pos) + [False] * len(neg))
    return roc_auc(s, y)


def _pr(pred: set[str], ref: set[str]) -> tuple[float, float]:
    tp = len(pred & ref)
    precision = tp / len(pred) if pred else float("nan")
    recall = tp / len(ref) if ref else float("nan")
    return precision, recall


def score_circuit(circuit: Any, ref_edges: Tensor, ref_nodes: set[str]) -> dict[str, Any]:
    """Edge/node AUC, precision/recall at the natural threshold, recall@k of one circuit."""
    from circuitfind.evaluation import roc_auc

    graph: Graph = circuit.graph
    scores = circuit.score_matrix
    valid = graph.valid
    s_abs = scores.abs().nan_to_num(0.0)
    s_abs = torch.where(valid, s_abs, torch.zeros_like(s_abs))
    top = float(s_abs.max())
    method = circuit.meta.get("method")
    if method == "acdc":
        pred = circuit.in_graph & valid
    else:
        pred = (s_abs > REL_EPS * top) & valid if top > 0 else torch.zeros_like(valid)
    ref = ref_edges & valid
    k = int(ref.sum())
    flat = torch.where(valid, s_abs, torch.full_like(s_abs, -1.0)).flatten()
    topk = torch.zeros_like(flat, dtype=torch.bool)
    topk[flat.topk(k).indices] = True
    tp = int((pred & ref).sum())
    n_pred = int(pred.sum())

    if circuit.node_scores is not None:
        n_scores = {k_: abs(v) for k_, v in circuit.node_scores.items()}
    else:
        n_scores = node_scores_from_edges(graph, scores)
    names = _node_names(graph)
    n_top = max(n_scores.values(), default=0.0)
    if method == "acdc":
        node_pred = {n for n in circuit.nodes if n in n_scores}
    else:
        node_pred = {n for n in names if n_top > 0 and n_scores.get(n, 0.0) > REL_EPS * n_top}
    node_p, node_r = _pr(node_pred, ref_nodes)
    return {
        "edge_auc": roc_auc(scores, ref, valid),
        "edge_precision": tp / n_pred if n_pred else float("nan"),
        "edge_recall": tp / k if k else float("nan"),
        "edge_recall_at_k": int((topk.view_as(ref) & ref).sum()) / k if k else float("nan"),
        "n_predicted_edges": int(pred.sum()),
        "node_auc": _auc(
            [n_scores.get(n, 0.0) for n in names if n in ref_nodes],
            [n_scores.get(n, 0.0) for n in names if n not in ref_nodes],
        ),
        "node_precision": node_p,
        "node_recall": node_r,
        "predicted_nodes": sorted(node_pred),
        "faithfulness": circuit.meta.get("faithfulness"),
        "scoring_time_s": circuit.meta.get("scoring_time_s"),
    }


def recovery(
    model: Any,
    task: Any,
    reference: Any,
    ref_nodes: set[str],
    *,
    methods: tuple[str, ...] = ALL_METHODS,
    ablations: tuple[str, ...] = ALL_ABLATIONS,
    steps: int = 5,
    budget_s: float = 300.0,
) -> list[dict[str, Any]]:
    """One row per method x ablation. ``reference(graph, ablation) -> [S, R] bool``."""
    import circuitfind

    graph = Graph.from_model(model)
    rows = []
    for ablation in ablations:
        ref = reference(graph, ablation)
        for method in methods:
            what = f"{method}/{ablation}"
            outcome = timed(
                partial(
                    circuitfind.discover,
                    model,
                    task,
                    method=method,
                    ablation=ablation,
                    top_n=max(1, int(ref.sum())) if method != "node" else len(ref_nodes),
                    progress=False,
                    seed=0,
                    steps=steps,
                ),
                budget_s=budget_s,
                what=what,
            )
            row: dict[str, Any] = {"method": method, "ablation": ablation, **outcome.to_dict()}
            if outcome.value is not None:
                try:
                    row.update(score_circuit(outcome.value, ref, ref_nodes))
                except Exception as exc:  # recorded, never raised: the table says what failed
                    row.update(status="failed", error=f"scoring: {type(exc).__name__}: {exc}")
            rows.append(row)
            logger.info("%s: %s", what, row.get("status"))
    return rows


def _rows_table(rows: list[dict[str, Any]]) -> list[str]:
    header = [
        "method",
        "ablation",
        "edge AUC",
        "edge P",
        "edge R",
        "edge R@k",
        "node AUC",
        "node P",
        "node R",
        "time s",
        "status",
    ]
    body = []
    for r in rows:
        if r["status"] == "failed":
            body.append(
                [r["method"], r["ablation"], *["-"] * 7, r["seconds"], f"FAILED: {r['error']}"]
            )
            continue
        body.append(
            [
                r["method"],
                r["ablation"],
                r.get("edge_auc"),
                r.get("edge_precision"),
                r.get("edge_recall"),
                r.get("edge_recall_at_k"),
                r.get("node_auc"),
                r.get("node_precision"),
                r.get("node_recall"),
                r["seconds"],
                r["status"] if r["status"] == "ok" else f"{r['status'].upper()}: {r['error']}",
            ]
        )
    return md_table(header, body)


# ---------------------------------------------------------------------------- planted
def planted_case(*, quick: bool, seed: int, methods: tuple[str, ...]) -> dict[str, Any]:
    """The planted model: verify the construction, then score every method x ablation."""
    import circuitfind
    from circuitfind.bench import planted
    from circuitfind.methods import method_spec
    from circuitfind.runs import PreparedRuns

    model = circuitfind.load(planted.planted_model(seed))
    task = planted.planted_task(n=16 if quick else 32, seed=seed)
    graph = Graph.from_model(model)
    checks = {}
    for ablation in ALL_ABLATIONS:
        runs = PreparedRuns(model, task, ablation, graph=graph)
        s = method_spec("exact").function()(runs).edges
        gt = planted.ground_truth(graph, ablation)
        checks[ablation] = {
            "max_abs_off_circuit": float(s[graph.valid & ~gt].abs().max()),
            "min_abs_on_circuit": float(s[gt].abs().min()),
            "n_circuit_edges": int(gt.sum()),
        }
    rows = recovery(
        model, task, planted.ground_truth, planted.ground_truth_nodes(), methods=methods
    )
    return {
        "n_edges": graph.n_edges,
        "n_prompts": len(task),
        "planted_edges": planted.PLANTED_EDGES,
        "planted_nodes": list(planted.PLANTED_NODES),
        "construction_check": checks,
        "rows": rows,
    }


# ---------------------------------------------------------------------------- zoo induction
def induction_reference(hf: Any, tok: Any, *, seed: int, n: int = 64) -> dict[str, Any]:
    """Previous-token and induction heads of a zoo model, from attention-pattern scores and head
    ablation (both measured here, on fresh repeated-token prompts)."""
    from circuitfind.zoo.diagnostics import ablate_heads, hf_pattern_scores, repeated_tokens

    segment = 12
    special = set(tok.all_special_ids) if tok is not None else set()
    candidates = [i for i in range(hf.config.vocab_size) if i not in special]
    tokens = repeated_tokens(candidates, n=n, length=segment, seed=seed)
    scores = hf_pattern_scores(hf, tokens)

    def accuracy() -> float:
        with torch.no_grad():
            logits = hf(tokens).logits
        pred = logits[:, segment:-1].argmax(-1)
        return float((pred == tokens[:, segment + 1 :]).float().mean())

    base = accuracy()
    n_layers, n_heads = scores["previous_token"].shape
    drop = torch.zeros(n_layers, n_heads)
    for layer in range(n_layers):
        for head in range(n_heads):
            with ablate_heads(hf, [(layer, head)]):
                drop[layer, head] = base - accuracy()

    def role(score: Tensor, layers: range) -> tuple[list[tuple[int, int]], float]:
        """Heads whose pattern fits the role and that carry the task: ablating the fitting heads
        together must cost induction accuracy, and each head counts if ablating it alone costs
        accuracy or if, with the other fitting heads ablated, it alone restores accuracy
        (redundant copies are each cheap to lose; a head whose output nobody uses restores
        nothing, whatever its pattern)."""
        fits = [(lay, h) for lay in layers for h in range(n_heads) if score[lay, h] >= PATTERN_MIN]
        if not fits:
            return [], 0.0
        with ablate_heads(hf, fits):
            group_drop = base - accuracy()
        if group_drop < ABLATION_MIN:
            return [], group_drop
        keep = []
        for head in fits:
            others = [f for f in fits if f != head]
            if others:
                with ablate_heads(hf, others):
                    restores = group_drop - (base - accuracy())
            else:
                restores = group_drop
            if drop[head] >= ABLATION_MIN or restores >= ABLATION_MIN:
                keep.append(head)
        return keep, group_drop

    prev, prev_drop = role(scores["previous_token"], range(n_layers - 1))
    ind, ind_drop = role(scores["induction"], range(1, n_layers))
    ind = [(lay, h) for lay, h in ind if any(p[0] < lay for p in prev)]
    return {
        "group_ablation_drop": {"previous_token": prev_drop, "induction": ind_drop},
        "accuracy": base,
        "previous_token": scores["previous_token"].tolist(),
        "induction": scores["induction"].tolist(),
        "ablation_drop": drop.tolist(),
        "previous_token_heads": [f"a{layer}.h{h}" for layer, h in prev],
        "induction_heads": [f"a{layer}.h{h}" for layer, h in ind],
    }


def induction_edges(graph: Graph, prev: list[str], ind: list[str]) -> Tensor:
    """The K-composition circuit: previous-token heads -> induction heads' keys, the induction
    heads' query and value from the tokens, the previous-token heads' values from the tokens, and
    the induction heads -> logits."""
    names = [
        f"{p}->{i}<k>"
        for p in prev
        for i in ind
        if int(p[1:].split(".")[0]) < int(i[1:].split(".")[0])
    ]
    names += [f"input->{i}<q>" for i in ind] + [f"input->{i}<v>" for i in ind]
    names += [f"input->{p}<v>" for p in prev] + [f"{i}->logits" for i in ind]
    out = torch.zeros(graph.n_senders, graph.n_receivers, dtype=torch.bool)
    for name in names:
        e = graph.edges[name]
        out[e.sender_index, e.receiver_index] = True
    return out


def induction_case(*, quick: bool, seed: int, methods: tuple[str, ...]) -> dict[str, Any]:
    import circuitfind
    from circuitfind.zoo import load_hf

    hf, tok = load_hf("induction-2l")
    found = induction_reference(hf, tok, seed=seed + 1000)
    prev, ind = found["previous_token_heads"], found["induction_heads"]
    result: dict[str, Any] = {"diagnostics": found}
    if not prev or not ind:
        result["skipped"] = (
            "no previous-token -> induction pair passes the independent test (pattern score >= "
            f"{PATTERN_MIN} and an ablation cost, alone or as the role's group, >= {ABLATION_MIN} "
            "in induction accuracy): this "
            "model does not implement the canonical circuit, so there is no ground truth to score"
        )
        return result
    model = circuitfind.load("zoo:induction-2l")
    task = circuitfind.get_task("induction", model, n=16 if quick else 32, seed=seed)
    graph = Graph.from_model(model)
    result["n_edges"] = graph.n_edges
    result["n_prompts"] = len(task)
    result["reference_edges"] = [
        graph.edge_name(int(s), int(r))
        for s, r in induction_edges(graph, prev, ind).nonzero().tolist()
    ]
    result["rows"] = recovery(
        model,
        task,
        lambda g, _abl: induction_edges(g, prev, ind),
        set(prev) | set(ind),
        methods=methods,
    )
    return result


# ---------------------------------------------------------------------------- the suite
def run(out_dir: Path, *, quick: bool, seed: int) -> dict[str, Any]:
    """Write ``known_circuits.md``/``.json`` under ``out_dir``."""
    methods = ALL_METHODS
    report = Report("known_circuits", "Known-circuit recovery", stamp(seed, quick))
    report.add(
        "Edge/node ROC AUC of |score| against a reference circuit known independently of the "
        "methods. P/R: precision and recall at the natural threshold (|score| > "
        f"{REL_EPS:g} x the largest; ACDC: the edges it keeps, tau 0.01 on KL). R@k: recall among "
        "the k best edges, k = the reference's size. Node scores: the node method's own, else the "
        "largest |score| of the node's edges. Time: discovery, seconds.",
        "",
    )
    planted = planted_case(quick=quick, seed=seed, methods=methods)
    report.data["planted"] = planted
    report.add("## Planted circuit (GPT-2 architecture, weights set by hand)", "")
    report.add(
        "`circuitfind.bench.planted`: 2 layers x 4 heads, d_model 144, "
        f"{planted['n_edges']} edges, {planted['n_prompts']} induction prompts. The previous-token "
        "head a0.h0 and the induction head a1.h0 carry the task; every other head and both MLPs "
        "write only into a subspace nothing reads (LayerNorm made exactly linear). Planted edges "
        "(what they carry): "
        + ", ".join(f"`{e}` ({c})" for e, c in planted["planted_edges"].items())
        + ". Resample ablation cannot see the two positional edges (the positions of a clean and "
        "a corrupted prompt are the same), so its reference holds the 5 token edges.",
        "",
        "Construction check (exact patching of every edge):",
        "",
    )
    report.add(
        *md_table(
            ["ablation", "reference edges", "largest abs. score off the circuit", "smallest on it"],
            [
                [
                    a,
                    c["n_circuit_edges"],
                    f"{c['max_abs_off_circuit']:.1e}",
                    f"{c['min_abs_on_circuit']:.3f}",
                ]
                for a, c in planted["construction_check"].items()
            ],
        )
    )
    report.add(*_rows_table(planted["rows"]))

    report.add("## Zoo induction model (zoo:induction-2l)", "")
    ind = induction_case(quick=quick, seed=seed, methods=methods)
    report.data["induction"] = ind
    d = ind["diagnostics"]
    report.add(
        f"Reference found at run time: previous-token heads (layer < last, previous-token score "
        f">= {PATTERN_MIN}; zero-ablating the fitting heads together costs >= {ABLATION_MIN} of "
        "induction accuracy, and each head counts if ablating it alone costs that much or if it "
        "alone restores that much with the other fitting heads ablated: redundant copies are "
        "each cheap to lose, and a head whose output nobody reads restores nothing) and "
        "induction heads (induction score >= the same, same ablation tests, above a "
        "previous-token head). Unablated accuracy on repeated tokens: "
        f"{d['accuracy']:.3f}; ablating the previous-token-pattern heads together costs "
        f"{d['group_ablation_drop']['previous_token']:.3f}, the induction-pattern heads "
        f"{d['group_ablation_drop']['induction']:.3f}.",
        "",
    )
    n_heads = len(d["previous_token"][0])
    diag_rows = []
    for layer in range(len(d["previous_token"])):
        for h in range(n_heads):
            diag_rows.append(
                [
                    f"a{layer}.h{h}",
                    d["previous_token"][layer][h],
                    d["induction"][layer][h],
                    d["ablation_drop"][layer][h],
                ]
            )
    report.add(
        *md_table(["head", "prev-token score", "induction score", "ablation cost"], diag_rows)
    )
    if "skipped" in ind:
        report.add(f"**Skipped:** {ind['skipped']}.", "")
    else:
        report.add(
            f"Previous-token heads: {', '.join(d['previous_token_heads'])}; induction heads: "
            f"{', '.join(d['induction_heads'])}. Reference edges ({len(ind['reference_edges'])} "
            f"of {ind['n_edges']}): " + ", ".join(f"`{e}`" for e in ind["reference_edges"]) + ".",
            "",
        )
        report.add(*_rows_table(ind["rows"]))
    files = report.write(out_dir)
    return {"files": files, "summary": _summary(planted, ind)}


def _summary(planted: dict[str, Any], ind: dict[str, Any]) -> dict[str, Any]:
    def best(rows: list[dict[str, Any]]) -> dict[str, str]:
        return {
            f"{r['method']}/{r['ablation']}": fmt(r.get("edge_auc"))
            for r in rows
            if r["status"] != "failed"
        }

    return {
        "planted_edge_auc": best(planted["rows"]),
        "induction_edge_auc": best(ind.get("rows", [])) if "rows" in ind else ind.get("skipped"),
    }
