"""Each feature's top-activating examples from the data its transcoder was trained on.

For an explorer: ``top_examples`` returns, per site and feature, the ``k`` tokens of largest
activation over ``data`` (default: the data ``evaluation_data`` picks, a zoo model's own
generator), each with its sequence row, position, activation and the ``window`` tokens before it.
"""

from __future__ import annotations

from typing import Any

import torch

from circuitfind.features.training import _as_data, site_pairs
from circuitfind.features.transcoder import Transcoder
from circuitfind.model import Model

__all__ = ["graph_examples", "top_examples"]


def top_examples(
    model: Model,
    transcoders: dict[str, Transcoder],
    data: Any = None,
    *,
    features: dict[str, list[int]] | None = None,
    k: int = 10,
    window: int = 8,
    n: int = 128,
    seed: int = 0,
) -> dict[str, dict[int, list[dict[str, Any]]]]:
    """``{site: {feature: [{row, pos, activation, context, token}, ...]}}`` (features never
    active over the data are left out)."""
    ev = _as_data(model, data, n, seed)
    sites = sorted(transcoders) if features is None else sorted(features)
    pairs = site_pairs(model, ev, sites)
    real = (
        ev.attention_mask.bool()
        if ev.attention_mask is not None
        else torch.ones_like(ev.tokens, dtype=torch.bool)
    )
    where = real.nonzero()  # [N, 2] (row, pos), in the order site_pairs flattens
    tok = model.tokenizer

    def text(ids: list[int]) -> list[str]:
        return [tok.decode([i]) if tok is not None else str(i) for i in ids]

    out: dict[str, dict[int, list[dict[str, Any]]]] = {}
    for site in sites:
        tc = transcoders[site]
        with torch.no_grad():
            acts = tc.encode(pairs[site][0])  # [N, d_sae]
        wanted = range(acts.shape[1]) if features is None else features[site]
        per: dict[int, list[dict[str, Any]]] = {}
        for f in wanted:
            col = acts[:, f]
            if not bool((col > 0).any()):
                continue
            top = col.topk(min(k, int((col > 0).sum())))
            rows = []
            for v, i in zip(top.values.tolist(), top.indices.tolist(), strict=True):
                r, p = (int(x) for x in where[i])
                ctx = ev.tokens[r, max(0, p - window) : p + 1].tolist()
                token = text([int(ev.tokens[r, p])])[0]
                rows.append(
                    {"row": r, "pos": p, "activation": v, "context": text(ctx), "token": token}
                )
            per[int(f)] = rows
        out[site] = per
    return out


def graph_examples(
    model: Model, transcoders: dict[str, Transcoder], graph: Any, **kwargs: Any
) -> dict[str, dict[int, list[dict[str, Any]]]]:
    """Top examples of the features a (pruned) attribution graph keeps."""
    keep = graph.pruning.node_mask if graph.pruning is not None else None
    feats: dict[str, list[int]] = {}
    for i, nd in enumerate(graph.nodes):
        if nd.kind == "feature" and (keep is None or bool(keep[i])):
            feats.setdefault(nd.site, [])
            if nd.feature not in feats[nd.site]:
                feats[nd.site].append(nd.feature)
    return top_examples(model, transcoders, features=feats, **kwargs)
