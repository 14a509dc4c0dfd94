"""Exact patching's arithmetic bound: how much faster per edge than one forward it can be, by
counting the multiply-adds its patched pass makes against those of a plain forward.

The patched pass of edge s -> r (``circuitfind.methods.exact``) reads everything before r's
layer from the clean cache; it recomputes r's own head (or MLP), every later layer on every
position, the last layer's keys and values on every position but its queries, output and MLP at
the readout position only, and the unembedding at the readout position only. A forward makes
every layer and the unembedding on every position. The ratio of the two, averaged over every
edge, is what exact patching can reach at the forward's arithmetic speed: the measured speed-up
divided by it says how close the code runs to it.
"""

from __future__ import annotations

from typing import Any

__all__ = ["exact_bound"]


def exact_bound(cfg: Any, graph: Any, tokens: int) -> dict[str, float]:
    """Multiply-adds per token of a forward and of the average edge's patched pass, and their
    ratio (``speedup``), for a model config ``cfg`` (``circuitfind`` ``ModelConfig``),
    ``graph`` and prompts of ``tokens`` positions (one readout position each)."""
    d, L, H = cfg.d_model, cfg.n_layers, cfg.n_heads
    dh, kv = cfg.d_head, cfg.n_kv_heads
    vocab = cfg.d_vocab
    d_mlp = cfg.d_mlp
    mlp = (3 if getattr(cfg, "gated_mlp", False) else 2) * d * d_mlp
    q, k_v, o = d * H * dh, 2 * d * kv * dh, H * dh * d
    scores = 2 * tokens * H * dh  # q.k and pattern.v, per query position
    layer = q + k_v + o + scores + mlp
    readout = 1.0 / tokens  # the readout positions' share of every position
    last = k_v + (q + o + scores + mlp) * readout  # the last layer, queries at the readout only
    unembed = d * vocab * readout
    forward = L * layer + d * vocab

    def after(lay: int) -> float:
        """Layers after ``lay`` and the readout unembedding."""
        rest = sum(layer for _ in range(lay + 1, L - 1))
        return rest + (last if lay < L - 1 else 0.0) + unembed

    total, edges = 0.0, 0
    for rec in graph.receivers:
        n = int(graph.n_upstream[rec.index])
        if rec.node == "logits":
            cost = unembed
        else:
            lay = int(rec.layer)
            share = readout if lay == L - 1 else 1.0
            if rec.qkv is None:
                cost = mlp * share + after(lay)
            else:  # one head's q at the computed positions, its k and v everywhere
                own = (d * dh + scores / H + dh * d) * share + 2 * d * dh
                cost = own + mlp * share + after(lay)
        total += cost * n
        edges += n
    per_edge = total / max(1, edges)
    return {
        "forward_macs_per_token": forward,
        "edge_macs_per_token": per_edge,
        "speedup": forward / per_edge,
    }
