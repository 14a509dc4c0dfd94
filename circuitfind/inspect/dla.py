"""Direct logit attribution: each node's direct contribution to a logit (difference).

The final residual stream is the sum of node outputs (``input``, ``a{L}.h{H}``, ``m{L}``) plus the
constant attention-output biases. With the final norm's scale frozen at its value in the run,
the norm is affine, so each node's term maps to the logits on its own:

- LayerNorm: ``((x_n - mean(x_n)) / scale * w_lnf) @ u``,
- RMSNorm: ``(x_n / scale * w_lnf) @ u``,

where ``u = W_U[:, answer] - W_U[:, wrong]``. The constants — every layer's ``b_O`` through the
same map, the final norm's bias and the unembedding bias — come back under the key ``bias``, so
the values sum to the model's logit (difference) at the readout position exactly.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

import torch
from torch import Tensor

from circuitfind.errors import InputError
from circuitfind.inspect._common import (
    AnswerLike,
    TokensLike,
    as_tokens,
    readout_positions,
    token_ids,
)

if TYPE_CHECKING:
    from circuitfind.model import Model

__all__ = ["additive_readout", "direct_map", "dla", "dla_by_layer", "dla_heads"]


def direct_map(model: Model, resid: Tensor, u: Tensor) -> Callable[[Tensor], Tensor]:
    """The one DLA map: a node's term [batch, ..., d_model] -> its direct effect [batch, ...]
    along the unembedding directions ``u`` [batch, d_model], with the final norm's scale frozen
    at its value on ``resid`` [batch, d_model] (the run's final stream at the readout).

    LayerNorm: ``((x - mean x) / scale * w) . u``; RMSNorm: ``(x / scale * w) . u``, where ``w`` is
    the norm's effective weight (``1 + w`` for Gemma's norms: ``model.norm_scale``).
    """
    x = resid.float()
    layernorm = model.cfg.norm == "layernorm"
    eps = model.w.lnf_eps
    if layernorm:
        scale = (x.var(-1, unbiased=False, keepdim=True) + eps).sqrt()
    else:
        scale = (x.pow(2).mean(-1, keepdim=True) + eps).sqrt()
    direction = model.norm_scale(model.w.lnf_w) * u.float() / scale  # [batch, d_model]
    batch = x.shape[0]

    def through(term: Tensor) -> Tensor:
        term = term.float()
        if layernorm:
            term = term - term.mean(-1, keepdim=True)
        shape = (batch,) + (1,) * (term.dim() - 2) + (term.shape[-1],)
        return (term * direction.view(shape)).sum(-1)

    return through


def additive_readout(model: Model) -> bool:
    """Whether the logits are an affine map of a sum of node outputs once the final norm's
    scale is frozen (no post-norms inside the stream, no soft-capped logits): DLA's premise."""
    cfg = model.cfg
    return not (getattr(cfg, "post_norms", False) or getattr(cfg, "final_softcap", None))


def dla(
    model: Model,
    tokens: TokensLike,
    answer: AnswerLike,
    wrong: AnswerLike | None = None,
    *,
    position: int | Tensor | None = None,
    attention_mask: Tensor | None = None,
) -> dict[str, Tensor]:
    """Each node's direct contribution to logit(answer) (− logit(wrong)) at the readout position.

    Args:
        model: the model.
        tokens: token ids [batch, pos] (or text).
        answer: the answer token (id or single-token string), one for all rows or one per row.
        wrong: an optional contrasting token; then the target is the logit difference.
        position: the readout position (default: the last real token of each row).
        attention_mask: [batch, pos] for padded batches.

    Returns:
        ``{node name: Tensor [batch]}`` over ``input``, every ``a{L}.h{H}``, every ``m{L}`` and
        ``bias``; the values sum to the actual logit (difference).
    """
    if not additive_readout(model):
        raise InputError(
            f"direct logit attribution does not add up on {model.cfg.family}: its "
            "post-norms (or soft-capped logits) make a node's effect on the logits depend on "
            "the others; use exact patching (cf.score(..., method='exact')) for node effects"
        )
    ids, mask = as_tokens(model, tokens, attention_mask)
    batch = ids.shape[0]
    pos = readout_positions(ids, mask, position)
    rows = torch.arange(batch, device=ids.device)
    u = model.w.W_U[:, token_ids(model, answer, batch)].T  # [batch, d_model]
    b_u = model.w.b_U[token_ids(model, answer, batch)] if model.w.b_U is not None else None
    if wrong is not None:
        w_ids = token_ids(model, wrong, batch)
        u = u - model.w.W_U[:, w_ids].T
        if b_u is not None and model.w.b_U is not None:
            b_u = b_u - model.w.b_U[w_ids]
    with torch.no_grad():
        _, cache = model.run_with_cache(ids, mask)
        assert cache.resid_final is not None
        through = direct_map(model, cache.resid_final[rows, pos], u)

        out: dict[str, Tensor] = {"input": through(cache.input[rows, pos].float())}
        constant = torch.zeros(batch, device=ids.device)
        for layer in range(model.cfg.n_layers):
            heads = through(cache.heads[layer][rows, pos].float())  # [batch, head]
            for h in range(model.cfg.n_heads):
                out[f"a{layer}.h{h}"] = heads[:, h]
            out[f"m{layer}"] = through(cache.mlps[layer][rows, pos].float())
            b_o = cache.attn_bias[layer]
            if b_o is not None:
                constant = constant + through(b_o.float().expand(batch, -1))
        if model.w.lnf_b is not None:
            constant = constant + u.float() @ model.w.lnf_b.float()
        if b_u is not None:
            constant = constant + b_u.float()
        out["bias"] = constant
    return out


def dla_heads(contributions: dict[str, Tensor], n_layers: int, n_heads: int) -> Tensor:
    """The head entries of a ``dla`` result averaged over the batch: [n_layers, n_heads]."""
    grid = torch.zeros(n_layers, n_heads)
    for layer in range(n_layers):
        for h in range(n_heads):
            grid[layer, h] = contributions[f"a{layer}.h{h}"].float().mean().cpu()
    return grid


def dla_by_layer(contributions: dict[str, Tensor], n_layers: int) -> dict[str, float]:
    """Batch-mean contributions summed per component: input, attn{L}, mlp{L}, bias."""
    out = {"input": float(contributions["input"].mean())}
    for layer in range(n_layers):
        heads = [v for k, v in contributions.items() if k.startswith(f"a{layer}.h")]
        out[f"attn{layer}"] = float(torch.stack(heads).sum(0).mean())
        out[f"mlp{layer}"] = float(contributions[f"m{layer}"].mean())
    out["bias"] = float(contributions["bias"].mean())
    return out
