"""Masked runs with position-aware edges: a mask [S, R, P] over (edge, column).

The same run as :func:`circuitfind.patching.masked_forward`, with each receiver's input formed
position by position: at position t of prompt i, receiver r reads
``const_r + sum_s A_s[t] + sum_s mask[s, r, col(i, t)] * D_s[t]``, ``col`` the
:class:`circuitfind.positions.PositionLayout` column of that token. Several masks
[V, S, R, P] run in one pass, stacked on the batch axis (variant-major). Every column on is the
clean run and every column off the ablated one, exactly; a mask constant over its columns is the
position-free mask.
"""

from __future__ import annotations

import torch
from torch import Tensor

from circuitfind.graph import Graph
from circuitfind.model import Model
from circuitfind.patching import _layer_constant, readout_logits

__all__ = ["masked_forward_positional"]


def _row_weights(mask: Tensor, columns: Tensor) -> Tensor:
    """mask [V, s, c, P] at each row's columns [b, p]: [s, c, V * b, p]."""
    V, S, R, _ = mask.shape
    w = mask[..., columns]  # [V, s, c, b, p]
    return w.permute(1, 2, 0, 3, 4).reshape(S, R, V * columns.shape[0], columns.shape[1])


def masked_forward_positional(
    model: Model,
    graph: Graph,
    tokens: Tensor,
    attention_mask: Tensor | None,
    ablated: Tensor,
    mask: Tensor,
    columns: Tensor,
    *,
    readout: Tensor | None = None,
    prefix: Tensor | list[Tensor] | None = None,
    start_layer: int = 0,
) -> Tensor:
    """Run the model with each (edge, column) kept (1), ablated (0) or in between.

    Args:
        tokens: [b, p]; ablated: [S, b|1, p|1, d] (``Ablation.outputs``).
        mask: [S, R, P] or [V, S, R, P] (V variants in one pass), bool or float.
        columns: [b, p] long: the column of each token (``PositionLayout.batch``).
        readout: [b] positions to unembed, or None for every position.
        prefix, start_layer: as for ``masked_forward`` (differences of the senders before
            ``start_layer``, each [b, p, d], shared by every variant).

    Returns:
        logits [V * b, vocab] at ``readout`` (variant-major), or [V * b, p, vocab].
    """
    cfg = model.cfg
    H = cfg.n_heads
    mask4 = (mask if mask.dim() == 4 else mask[None]).to(device=tokens.device, dtype=model.dtype)
    V = mask4.shape[0]
    columns = columns.to(tokens.device)
    b, p = tokens.shape

    def weights(cols: list[int], upstream: int) -> Tensor:
        """The receivers' weights per row and position: [s, c, B, p], B = V * b."""
        return _row_weights(mask4[:, :upstream, cols], columns)

    rows = tokens.repeat(V, 1)
    am = None if attention_mask is None else attention_mask.repeat(V, 1)
    ctx = model.context(rows, am)
    A = ablated.expand(ablated.shape[0], b, p, cfg.d_model)  # [S, B, p, d] (a view for V = 1)
    if V > 1:
        A = A.repeat(1, V, 1, 1)
    if prefix is None:
        D: list[Tensor] = [model.embed(rows, ctx) - A[0]]
    else:
        if len(prefix) != 1 + start_layer * (H + 1):
            raise ValueError("prefix must hold the senders before start_layer")
        D = [t.repeat(V, 1, 1) for t in prefix]
    post = cfg.post_norms
    a_cum = A.cumsum(0)  # a_cum[k] = sum_{s <= k} A_s
    a_pre: list[Tensor] = []
    if post:
        for layer in range(cfg.n_layers):
            first = 1 + layer * (H + 1)
            bias = model.w.layers[layer].b_O
            total = A[first : first + H].sum(0)
            a_pre.append(total + bias if bias is not None else total)

    def plain_input(cols: list[int], upstream: int, constant: Tensor | float) -> Tensor:
        """Receivers without post-norms: [B, p, c, d], or the shared [B, p, d] stream."""
        w = weights(cols, upstream)  # [s, c, B, p]
        base = a_cum[upstream - 1] + constant
        if not w.requires_grad and bool((w == 1).all()):
            return base + torch.stack(D[:upstream]).sum(0)
        stacked = torch.stack(D[:upstream])  # [s, B, p, d]
        return base.unsqueeze(2) + torch.einsum("sBpd,scBp->Bpcd", stacked, w)

    def post_input(cols: list[int], upstream: int) -> Tensor:
        """Receivers with post-norms (see ``_masked_forward_post_norms``): [B, p, c, d]."""
        w = weights(cols, upstream)  # [s, c, B, p]
        x = A[0].unsqueeze(2) + D[0].unsqueeze(2) * w[0].permute(1, 2, 0)[..., None]
        for layer in range(cfg.n_layers):
            first = 1 + layer * (H + 1)
            if first >= upstream:
                break
            heads = torch.stack(D[first : first + H])  # [H, B, p, d]
            pre = a_pre[layer].unsqueeze(2) + torch.einsum(
                "sBpd,scBp->Bpcd", heads, w[first : first + H]
            )
            x = x + model.post_attn(layer, pre)
            m = first + H
            if m < upstream:
                x = x + A[m].unsqueeze(2) + D[m].unsqueeze(2) * w[m].permute(1, 2, 0)[..., None]
        return x

    def receiver_input(cols: list[int], upstream: int, constant: Tensor | float) -> Tensor:
        x = post_input(cols, upstream) if post else plain_input(cols, upstream, constant)
        return x

    def one(x: Tensor) -> Tensor:
        return x[:, :, 0] if x.dim() == 4 else x

    for layer in range(start_layer, cfg.n_layers):
        first = graph.receiver_index[f"a{layer}.h0<q>"]
        upstream = int(graph.n_upstream[first])
        constant = _layer_constant(model, layer, mlp=False)
        xs = [
            receiver_input(list(range(first + j * H, first + (j + 1) * H)), upstream, constant)
            for j in range(3)
        ]
        z, _ = model.attention(layer, xs[0], xs[1], xs[2], ctx)
        heads = model.head_results(layer, z)  # [B, p, h, d]
        for h in range(H):
            D.append(heads[:, :, h] - A[upstream + h])
        m_idx = graph.receiver_index[f"m{layer}"]
        m_up = int(graph.n_upstream[m_idx])
        x_mlp = one(receiver_input([m_idx], m_up, _layer_constant(model, layer, mlp=True)))
        D.append(model.mlp(layer, x_mlp) - A[upstream + H])
    final = one(
        receiver_input(
            [graph.n_receivers - 1],
            graph.n_senders,
            _layer_constant(model, cfg.n_layers, mlp=False),
        )
    )
    if readout is not None:
        return readout_logits(model, final, readout)
    return model.unembed(final)
