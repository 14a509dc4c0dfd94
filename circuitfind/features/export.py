"""Export an attribution graph to Neuronpedia's graph JSON (circuit-tracer's format).

Top level: ``metadata`` (slug, scan, transcoder_list, prompt_tokens, prompt, node_threshold,
plus circuitfind's ``info``), ``qParams`` (pinnedIds, supernodes, linkType, clickedId, sg_pos),
``nodes`` and ``links``. Node ids follow circuit-tracer: features ``{layer}_{feature}_{pos}``,
errors ``0_{layer}_{pos}``, tokens ``E_{token id}_{pos}``, the logit
``{n_layers + 1}_{token id}_{pos}``; each node has ``feature``, ``layer`` (a string),
``ctx_idx``, ``feature_type``, ``jsNodeId``, ``clerp``, ``influence`` (the cumulative influence
share at its rank, as circuit-tracer writes) and ``activation``. Links are
``{source, target, weight}`` over the kept edges, with ``heads`` (per-head split) added where
the edge passes through one attention layer.

When a graph has both attention and MLP sites, layer slots interleave them (``a{L}`` -> 2L,
``m{L}`` -> 2L + 1) so that node ids stay unique; the site is always in the ``clerp``.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from circuitfind.features.graph import AttributionGraph

__all__ = ["to_neuronpedia", "write_neuronpedia"]


def _slots(graph: AttributionGraph) -> tuple[dict[str, int], int]:
    sites = {n.site for n in graph.nodes if n.site is not None}
    kinds = {s[0] for s in sites}
    both = len(kinds) > 1
    slot = {s: (2 * int(s[1:]) + (s[0] == "m") if both else int(s[1:])) for s in sites}
    n_slots = 2 * graph.n_layers if both else graph.n_layers
    return slot, n_slots


def to_neuronpedia(
    graph: AttributionGraph, *, slug: str = "circuitfind-graph", scan: str | None = None
) -> dict[str, Any]:
    """The graph (pruned: run ``graph.prune`` first, or the defaults are used) as a dict."""
    if graph.pruning is None:
        graph.prune()
    assert graph.pruning is not None
    pr = graph.pruning
    slot, n_slots = _slots(graph)
    d_sae = max([n.feature or 0 for n in graph.nodes if n.kind == "feature"] + [1]) + 1
    offset = 10 ** math.ceil(math.log10(max(d_sae, 2)))
    ids: dict[int, str] = {}
    nodes: list[dict[str, Any]] = []
    for i, n in enumerate(graph.nodes):
        if not pr.node_mask[i]:
            continue
        base: dict[str, Any] = {"ctx_idx": n.pos, "influence": float(pr.cumulative[i])}
        if n.kind == "feature":
            assert n.site is not None and n.feature is not None
            layer = slot[n.site]
            nid = f"{layer}_{n.feature}_{n.pos}"
            base |= {
                "feature": n.feature + offset * layer,
                "layer": str(layer),
                "feature_type": "cross layer transcoder",
                "jsNodeId": f"{layer}_{n.feature}-0",
                "clerp": f"{n.site} feature {n.feature}",
                "activation": n.activation,
            }
        elif n.kind == "error":
            assert n.site is not None
            layer = slot.get(n.site, int(n.site[1:]))
            nid = f"0_{layer}_{n.pos}"
            base |= {
                "feature": -1,
                "layer": str(layer),
                "feature_type": "mlp reconstruction error",
                "jsNodeId": f"{layer}_{n.pos}-0",
                "clerp": f"{n.site} error",
            }
        elif n.kind == "token":
            tid = graph.tokens[n.pos]
            nid = f"E_{tid}_{n.pos}"
            base |= {
                "feature": n.pos,
                "layer": "E",
                "feature_type": "embedding",
                "jsNodeId": f"E_{tid}-{n.pos}",
                "clerp": f"token {n.token!r}",
            }
        else:
            tid = graph.target["token"]
            layer = n_slots + 1
            nid = f"{layer}_{tid}_{n.pos}"
            base |= {
                "feature": tid,
                "layer": str(layer),
                "feature_type": "logit",
                "is_target_logit": True,
                "jsNodeId": f"L_{tid}-{n.pos}",
                "clerp": f"Output {graph.target['token_str']!r} (logit {n.activation:.3f})",
                "activation": n.activation,
            }
        base["node_id"] = nid
        base["reverse_ctx_idx"] = len(graph.tokens) - 1 - n.pos
        base["run_idx"] = 0
        ids[i] = nid
        nodes.append(base)
    links = []
    for t, s in pr.edge_mask.nonzero().tolist():
        if s not in ids or t not in ids:
            continue
        link: dict[str, Any] = {
            "source": ids[s],
            "target": ids[t],
            "weight": float(graph.adjacency[t, s]),
        }
        hw = graph.heads_of(t, s)
        if hw is not None:
            layer = graph.nodes[t].layer
            link["heads"] = {f"a{layer}.h{h}": float(w) for h, w in enumerate(hw)}
        links.append(link)
    sites = graph.meta.get("sites", [])
    return {
        "metadata": {
            "slug": slug,
            "scan": scan or f"circuitfind-{graph.meta.get('model', 'model')}",
            "transcoder_list": [f"{graph.meta.get('model', '')}/{s}" for s in sites],
            "prompt_tokens": graph.token_strs,
            "prompt": "".join(graph.token_strs),
            "node_threshold": graph.meta.get("node_threshold"),
            "schema_version": 1,
            "info": {
                "generator": "circuitfind",
                "target": graph.target,
                "completeness_max_error": float(graph.completeness().max()),
                "layer_slots": slot,
            },
        },
        "qParams": {
            "pinnedIds": [],
            "supernodes": [],
            "linkType": "both",
            "clickedId": "",
            "sg_pos": "",
        },
        "nodes": nodes,
        "links": links,
    }


def write_neuronpedia(graph: AttributionGraph, path: str | Path, **kwargs: Any) -> Path:
    """Write ``to_neuronpedia(graph)`` as JSON to ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(to_neuronpedia(graph, **kwargs), indent=1))
    return path
