"""Why a head attends where it does: its attention score split over pairs of graph nodes.

The attribution graph freezes attention patterns, so the edges carry only what heads move (their
OV path). What makes a head look from query position ``t`` to key position ``s`` is its score
``q_t · k_s``; with the norm scales frozen, ``q_t`` and ``k_s`` are each a sum of one term per
graph source (the source's contribution to the stream at ``t`` or ``s``, normalised and
projected, rotary applied) plus a constant, so the score is exactly ``Σ_ij q_i · k_j`` over
pairs of sources (bias terms included). For an induction head this shows the previous-token
path: the top pair is the current token (query side) with the layer-0 node at ``s`` that holds
the previous token (key side).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from circuitfind.errors import InputError, UnsupportedModelError
from circuitfind.features.frozen import frozen_norm
from circuitfind.features.graph import AttributionGraph, propagate
from circuitfind.model import Model

__all__ = ["attention_drivers"]


def _streams(
    model: Model, graph: AttributionGraph, layer: int, positions: list[int]
) -> tuple[Tensor, Tensor]:
    """Each source's contribution [n_src, len(positions), d] to layer ``layer``'s input stream
    at ``positions``, and the constant part [len(positions), d]."""
    assert graph.state is not None
    fr, tcs, writes = graph.state
    dtype = graph.adjacency.dtype
    got: list[Tensor] = []

    def grab(L: int, resid: Tensor) -> None:
        if layer == L:
            got.append(resid[:, positions])

    rows = []
    for start in range(0, len(writes), 256):
        got.clear()
        propagate(model, fr, tcs, writes[start : start + 256], affine=False, dtype=dtype,
                  on_resid=grab)  # fmt: skip
        rows.append(got[0][: len(writes[start : start + 256])])
    got.clear()
    propagate(model, fr, tcs, [], affine=True, dtype=dtype, on_resid=grab)
    return torch.cat(rows), got[0][0]


def _project(
    model: Model, graph: AttributionGraph, layer: int, head: int, pos: int, x: Tensor, kind: str,
    affine: bool,
) -> Tensor:  # fmt: skip
    """Rows x [m, d] of the stream at ``pos`` -> their (rotated) query or key for ``head``."""
    assert graph.state is not None
    fr = graph.state[0]
    lw = model.w.layers[layer]
    dt = x.dtype
    h = frozen_norm(model, x, fr.inv_ln1[layer][pos], lw.ln1_w, lw.ln1_b, affine)
    if kind == "q":
        W, b = lw.W_Q[head], lw.b_Q
        bias = None if b is None else b[head]
    else:
        kv = head // model.cfg.group_size
        W, b = lw.W_K[kv], lw.b_K
        bias = None if b is None else b[kv]
    out = h @ W.to(dt)
    if affine and bias is not None:
        out = out + bias.to(dt)
    if model.cfg.positional == "rotary":
        ctx = model.context(fr.tokens[None])
        full = torch.zeros(
            1, fr.tokens.shape[0], out.shape[0], out.shape[1], dtype=dt, device=out.device
        )
        full[0, pos] = out
        out = model._rotate(full, ctx, layer)[0, pos]
    return out


def attention_drivers(
    model: Model,
    graph: AttributionGraph,
    layer: int,
    head: int,
    query_pos: int,
    key_pos: int,
    *,
    top: int = 10,
) -> dict[str, Any]:
    """The score of head ``a{layer}.h{head}`` from ``query_pos`` to ``key_pos`` split over pairs
    (query-side node, key-side node); "bias" names the constant part. Returns the exact score,
    the real one, the top pairs, and each side's per-node totals."""
    cfg = model.cfg
    if cfg.qk_norm is not None or cfg.attn_softcap:
        raise UnsupportedModelError(
            "QK attribution needs linear queries and keys; this model has q/k norms or "
            "soft-capped scores"
        )
    if graph.state is None:
        raise InputError("this graph has no frozen run (it was loaded from JSON); rebuild it")
    if not (0 <= layer < cfg.n_layers and 0 <= head < cfg.n_heads):
        raise InputError(f"no head a{layer}.h{head} in this model")
    if not 0 <= key_pos <= query_pos < len(graph.tokens):
        raise InputError("need 0 <= key_pos <= query_pos < prompt length")
    fr = graph.state[0]
    contrib, const = _streams(model, graph, layer, [query_pos, key_pos])
    q = _project(model, graph, layer, head, query_pos, contrib[:, 0], "q", False)
    k = _project(model, graph, layer, head, key_pos, contrib[:, 1], "k", False)
    q0 = _project(model, graph, layer, head, query_pos, const[0][None], "q", True)
    k0 = _project(model, graph, layer, head, key_pos, const[1][None], "k", True)
    Q, K = torch.cat([q, q0]), torch.cat([k, k0])  # [n_src + 1, d_head]
    scale = cfg.attn_scale[layer]
    P = (Q @ K.T) * scale  # [query-side node, key-side node]
    src_ids = [nd.id for nd, _ in zip(graph.nodes, graph.state[2], strict=False)] + ["bias"]
    with torch.no_grad():
        real_q = _real(model, fr.resid_pre[layer][query_pos], layer, head, query_pos, fr, "q")
        real_k = _real(model, fr.resid_pre[layer][key_pos], layer, head, key_pos, fr, "k")
    real = float((real_q @ real_k) * scale)
    flat = P.flatten().abs().argsort(descending=True)[:top]
    pairs = [
        {
            "query": src_ids[int(i) // P.shape[1]],
            "key": src_ids[int(i) % P.shape[1]],
            "score": float(P.flatten()[i]),
        }
        for i in flat
    ]

    def side(v: Tensor) -> list[dict[str, Any]]:
        order = v.abs().argsort(descending=True)[:top]
        return [{"node": src_ids[int(i)], "score": float(v[i])} for i in order]

    return {
        "head": f"a{layer}.h{head}",
        "query_pos": query_pos,
        "key_pos": key_pos,
        "score": float(P.sum()),
        "real_score": real,
        "pattern": float(fr.patterns[layer][head, query_pos, key_pos]),
        "pairs": pairs,
        "query_side": side(P.sum(1)),
        "key_side": side(P.sum(0)),
    }


def _real(model: Model, x: Tensor, layer: int, head: int, pos: int, fr: Any, kind: str) -> Tensor:
    """The real run's (rotated) query or key of ``head`` at ``pos`` from its stream ``x``."""
    lw = model.w.layers[layer]
    h = model.norm(x[None].double(), *_norm_args(lw))[0]
    if kind == "q":
        out = h @ lw.W_Q[head].double()
        out = out + lw.b_Q[head].double() if lw.b_Q is not None else out
    else:
        kv = head // model.cfg.group_size
        out = h @ lw.W_K[kv].double()
        out = out + lw.b_K[kv].double() if lw.b_K is not None else out
    if model.cfg.positional == "rotary":
        ctx = model.context(fr.tokens[None])
        full = torch.zeros(
            1, fr.tokens.shape[0], 1, out.shape[-1], dtype=out.dtype, device=out.device
        )
        full[0, pos, 0] = out
        out = model._rotate(full, ctx, layer)[0, pos, 0]
    return out


def _norm_args(lw: Any) -> tuple[Any, Any, float]:
    w = None if lw.ln1_w is None else lw.ln1_w.double()
    b = None if lw.ln1_b is None else lw.ln1_b.double()
    return w, b, lw.ln1_eps
