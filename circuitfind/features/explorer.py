"""The feature-graph explorer: a prompt's attribution graph as one offline HTML page.

The page (``assets/features.js`` on the component explorer's shared ``common.js``: its
helpers, tooltip and pan / zoom) draws the graph's nodes by layer (rows: the embeddings at the
bottom, then each transcoder site, ``a0``, ``m0``, ``a1``, ..., then the target logit at the
top) and token position (columns, labelled with the prompt's tokens). Hovering a node shows its
activation, its influence on the target and its direct effect on the target logit; clicking a
feature shows its top-activating examples from the transcoders' training data and its strongest
edges in and out. A slider re-prunes the graph at other node thresholds.

The payload (``build_feature_payload``), as JSON in the page:

* ``nodes``: the nodes some slider point keeps, in the graph's order (features, errors, tokens,
  the logit), each ``{id, kind, layer, pos, row, site, feature, key, label, activation,
  influence, cumulative, direct, replaced}``. ``activation`` is a feature's activation, the
  logit's value, or the norm of an error's or a token's write; ``influence`` its total
  normalised weight over all paths to the target (``PruneResult.influence``, circuit-tracer's),
  ``cumulative`` the share of all influence reached at its rank; ``direct`` the edge weight
  into the target logit (its direct effect, in logits); ``key`` (``a1.f17``) names a feature's
  examples; ``replaced`` says whether an error node's site has a transcoder (otherwise it is the
  whole output of an MLP without one).
* ``edges``: ``[source, target, weight]`` (indices into ``nodes``; ``weight`` =
  ``adjacency[target, source]``, the source's contribution to the target's input).
* ``points``: the slider's stops, ``{node_threshold, edge_threshold, nodes, edges, left_out,
  own}``: the graph pruned at that node threshold (``AttributionGraph.pruned``); ``own`` is the
  graph's own pruning (``graph.pruning``), the page's first view. At most ``max_edges`` edges
  are sent a point, the strongest by |weight| (``left_out`` counts the rest); a threshold that
  keeps more than ``max_nodes`` nodes is left off the slider.
* ``examples``: ``{key: [{activation, context, token, row, pos}]}`` as
  :func:`circuitfind.features.examples.top_examples` returns them (``context`` ends at the
  activating token); ``rows``, ``tokens``, ``target``, ``meta``.

Numbers are rounded to seven significant digits.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

from circuitfind.errors import InputError
from circuitfind.explorer.page import ZOOM_BUTTONS, page_html
from circuitfind.explorer.probe import sig
from circuitfind.features.graph import AttributionGraph
from circuitfind.features.prune import PruneResult

__all__ = [
    "NODE_THRESHOLDS",
    "build_feature_payload",
    "feature_explorer_html",
    "write_feature_explorer",
]

logger = logging.getLogger(__name__)

NODE_THRESHOLDS = (0.5, 0.6, 0.7, 0.8, 0.9, 0.95)  # the slider's stops besides the graph's own
MAX_NODES = 1500  # a slider point keeping more is left off: more than a page can lay out
MAX_EDGES = 3000  # edges sent per point, the strongest by |weight|
PAYLOAD_VERSION = 1
COLOURS = {"positive": "#2166ac", "negative": "#d6604d"}


def _num(x: float) -> float | None:
    return sig(x, 7)


def _site_key(site: str) -> tuple[int, bool]:
    return int(site[1:]), site[0] == "m"


def _rows(graph: AttributionGraph, shown: list[int]) -> list[dict[str, Any]]:
    """Bottom to top: embeddings, each site with a node in ``shown``, the logit."""
    present = {graph.nodes[i].site for i in shown}
    sites = sorted((s for s in present if s is not None), key=_site_key)
    rows = [{"key": "embed", "label": "embeddings"}]
    for s in sites:
        rows.append({"key": s, "label": f"L{s[1:]} {'MLP' if s[0] == 'm' else 'attention'}"})
    rows.append({"key": "logit", "label": "logit"})
    return rows


def _label(graph: AttributionGraph, i: int, labels: dict[str, str]) -> str:
    n = graph.nodes[i]
    if n.kind == "feature":
        key = f"{n.site}.f{n.feature}"
        return labels.get(n.id, labels.get(key, f"{n.site} feature {n.feature}"))
    if n.kind == "error":
        replaced = n.site in graph.meta.get("sites", [])
        return f"{n.site} error" if replaced else f"{n.site} (no transcoder)"
    if n.kind == "token":
        return f"token {graph.token_strs[n.pos]!r}"
    t = graph.target
    wrong = "" if t.get("wrong") is None else f" − logit of token {t['wrong']}"
    return f"logit {t['token_str']!r}{wrong}"


def _kept_edges(graph: AttributionGraph, pr: PruneResult, limit: int) -> tuple[list, int]:
    """(target, source) of the kept nonzero edges between kept nodes, strongest ``limit``
    first by |weight|, and how many were left out."""
    keep = pr.edge_mask & pr.node_mask[:, None] & pr.node_mask[None, :]
    keep &= graph.adjacency != 0
    t_idx, s_idx = keep.nonzero(as_tuple=True)
    left_out = max(0, len(t_idx) - limit)
    if left_out:
        top = graph.adjacency[t_idx, s_idx].abs().topk(limit).indices.sort().values
        t_idx, s_idx = t_idx[top], s_idx[top]
    return list(zip(t_idx.tolist(), s_idx.tolist())), left_out


def _points(
    graph: AttributionGraph, thresholds: tuple[float, ...] | list[float], max_nodes: int
) -> list[tuple[float, float, PruneResult, bool]]:
    if graph.pruning is None:
        graph.prune()
    assert graph.pruning is not None
    own_nt = float(graph.meta.get("node_threshold", 0.8))
    et = float(graph.meta.get("edge_threshold", 0.98))
    out = [(own_nt, et, graph.pruning, True)]
    for t in thresholds:
        if not 0.0 <= float(t) <= 1.0:
            raise InputError(f"node thresholds must be in [0, 1]; got {t}")
        if abs(float(t) - own_nt) < 1e-9:
            continue
        pr = graph.pruned(float(t), et)
        if int(pr.node_mask.sum()) > max_nodes:
            kept = int(pr.node_mask.sum())
            logger.info("node threshold %g keeps %d nodes: left off the slider", t, kept)
            continue
        out.append((float(t), et, pr, False))
    out.sort(key=lambda p: (p[0], not p[3]))
    return out


def _example_features(graph: AttributionGraph, nodes: list[int]) -> dict[str, list[int]]:
    feats: dict[str, list[int]] = {}
    for i in nodes:
        n = graph.nodes[i]
        if n.kind == "feature" and n.site is not None and n.feature is not None:
            feats.setdefault(n.site, [])
            if n.feature not in feats[n.site]:
                feats[n.site].append(n.feature)
    return {s: sorted(f) for s, f in feats.items()}


def build_feature_payload(
    graph: AttributionGraph,
    *,
    examples: dict[str, dict[int, list[dict[str, Any]]]] | None = None,
    model: Any = None,
    transcoders: Any = None,
    data: Any = None,
    k: int = 5,
    n: int = 256,
    seed: int = 0,
    labels: dict[str, str] | None = None,
    node_thresholds: tuple[float, ...] | list[float] = NODE_THRESHOLDS,
    max_nodes: int = MAX_NODES,
    max_edges: int = MAX_EDGES,
) -> dict[str, Any]:
    """The feature explorer's payload (module docstring) for ``graph`` (pruned with its
    defaults first when it is not).

    ``examples`` (``{site: {feature: rows}}``, as ``top_examples`` returns) gives the features'
    top-activating examples; without it, ``model`` and ``transcoders`` compute the ``k`` top
    examples of every feature the page shows over ``data`` (default: ``n`` sequences drawn with
    ``seed`` from a zoo model's generator, what ``train_transcoders`` trains on by default).
    ``labels`` ({node id or ``a1.f17``: text}) name features.
    """
    labels = labels or {}
    points = _points(graph, node_thresholds, max_nodes)
    per_point = [_kept_edges(graph, pr, max_edges) for _, _, pr, _ in points]
    kept_nodes = set()
    for _, _, pr, _ in points:
        kept_nodes |= set(pr.node_mask.nonzero().flatten().tolist())
    order = sorted(kept_nodes)
    node_index = {i: j for j, i in enumerate(order)}
    pairs = sorted({e for edges, _ in per_point for e in edges}, key=lambda e: (e[1], e[0]))
    edge_index = {e: j for j, e in enumerate(pairs)}

    source = None
    if examples is None and model is not None and transcoders is not None:
        from circuitfind.features.examples import top_examples
        from circuitfind.features.training import _as_data

        ev = _as_data(model, data, n, seed)
        feats = _example_features(graph, order)
        examples = top_examples(model, transcoders, ev, features=feats, k=k) if feats else {}
        source = ev.source

    rows = _rows(graph, order)
    row_of = {r["key"]: j for j, r in enumerate(rows)}
    assert graph.pruning is not None
    influence = graph.pruning.influence
    cumulative = graph.pruning.cumulative
    logit = graph.logit_index
    sites = set(graph.meta.get("sites", []))
    nodes = []
    for i in order:
        nd = graph.nodes[i]
        row = "embed" if nd.kind == "token" else "logit" if nd.kind == "logit" else nd.site
        nodes.append(
            {
                "id": nd.id,
                "kind": nd.kind,
                "layer": nd.layer,
                "pos": nd.pos,
                "row": row_of[str(row)],
                "site": nd.site,
                "feature": nd.feature,
                "key": f"{nd.site}.f{nd.feature}" if nd.kind == "feature" else None,
                "label": _label(graph, i, labels),
                "activation": _num(nd.activation),
                "influence": _num(float(influence[i])),
                "cumulative": sig(float(cumulative[i]), 4),
                "direct": None if i == logit else _num(float(graph.adjacency[logit, i])),
                "replaced": nd.site in sites if nd.kind == "error" else None,
            }
        )
    edges = [[node_index[s], node_index[t], _num(float(graph.adjacency[t, s]))] for t, s in pairs]
    point_data = []
    for (nt, et, pr, own), (kept, left_out) in zip(points, per_point):
        ids = pr.node_mask.nonzero().flatten().tolist()
        point_data.append(
            {
                "node_threshold": nt,
                "edge_threshold": et,
                "nodes": [node_index[i] for i in ids],
                "edges": sorted(edge_index[e] for e in kept),
                "left_out": left_out,
                "own": own,
            }
        )
    ex_out: dict[str, list[dict[str, Any]]] = {}
    for site, per in (examples or {}).items():
        for f, ex_rows in per.items():
            ex_out[f"{site}.f{int(f)}"] = [
                {
                    "activation": _num(float(r["activation"])),
                    "context": list(r["context"]),
                    "token": r["token"],
                    "row": int(r["row"]),
                    "pos": int(r["pos"]),
                }
                for r in ex_rows
            ]
    meta = graph.meta
    return {
        "version": PAYLOAD_VERSION,
        "meta": {
            "model": meta.get("model"),
            "sites": meta.get("sites", []),
            "n_features": meta.get("n_features"),
            "n_nodes_total": len(graph.nodes),
            "n_edges_total": int((graph.adjacency != 0).sum()),
            "completeness_max_error": _num(float(graph.completeness().max())),
            "examples": examples is not None,
            "examples_source": source,
        },
        "tokens": list(graph.token_strs),
        "target": dict(graph.target),
        "rows": rows,
        "nodes": nodes,
        "edges": edges,
        "points": point_data,
        "initial_point": next(j for j, p in enumerate(point_data) if p["own"]),
        "examples": ex_out,
        "colours": COLOURS,
    }


def feature_explorer_html(payload: dict[str, Any], title: str = "") -> str:
    """The feature explorer's page for ``payload`` (``build_feature_payload``)."""
    toolbar = f"""<label>node threshold
<input type="range" id="size" min="0" max="0" step="1" value="0"></label>
<span id="size-label"></span>
{ZOOM_BUTTONS}"""
    return page_html(
        payload,
        title=f"circuitfind feature graph{': ' + title if title else ''}",
        heading=title or "Attribution graph",
        toolbar=toolbar,
        styles=("features.css",),
        scripts=("features.js",),
    )


def _title(graph: AttributionGraph) -> str:
    t = graph.target
    parts = [str(graph.meta.get("model") or ""), f"target {t['token_str']!r} at {t['pos']}"]
    return " · ".join(p for p in parts if p)


def write_feature_explorer(
    graph: AttributionGraph,
    path: str | os.PathLike[str],
    *,
    title: str | None = None,
    **kwargs: Any,
) -> Path:
    """Write the feature explorer of ``graph`` to ``path`` (one offline HTML file); ``kwargs``
    go to :func:`build_feature_payload` (``examples=``, or ``model=`` and ``transcoders=``)."""
    payload = build_feature_payload(graph, **kwargs)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    html = feature_explorer_html(payload, _title(graph) if title is None else title)
    path.write_text(html, encoding="utf-8")
    logger.info("wrote %s (%.0f kB)", path, path.stat().st_size / 1e3)
    return path
