"""The local replacement model: one prompt's attention patterns and norm scales frozen.

With the patterns and every norm's 1/σ (or 1/RMS) taken from the real run, each attention layer
is a linear map of the stream (its OV path only: ``Σ_h A_h · norm(x) W_V^h W_O^h``) and each
norm an affine map, so everything between the features is linear. ``frozen_forward`` runs this
model from any per-site writes: the graph builder pushes a batch of single-source writes
through it (biases off) to read every direct effect, and once with biases on and no sources for
the constant part; the intervention check runs it with the transcoders' nonlinearities back on.

Sites are visited in the forward order: ``a{L}`` (the attention output) then ``m{L}`` (the MLP,
reading the post-norm stream). A site's ``write`` function gets the site's input ``x``
[B, pos, d_in] (and, at attention sites, the per-head outputs [B, pos, head, d_model]) and
returns what the site writes into the stream.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

from circuitfind.errors import InputError, UnsupportedModelError
from circuitfind.model import Model

__all__ = ["FrozenRun", "check_supported", "freeze", "frozen_forward", "site_order"]

Write = Callable[[str, Tensor, Tensor | None], Tensor]


def check_supported(model: Model) -> None:
    """Refuse the layouts the frozen linear model does not cover (clear, one line)."""
    cfg = model.cfg
    if cfg.post_norms:
        raise UnsupportedModelError(
            f"feature attribution does not yet cover post-norm families ({cfg.family}); use a "
            "pre-norm model (gpt2, llama, neox, ...)"
        )
    if cfg.final_softcap:
        raise UnsupportedModelError(
            "feature attribution needs a linear unembedding; this model soft-caps its logits"
        )


def site_order(model: Model) -> list[str]:
    """Every site in forward order: a0, m0, a1, m1, ..."""
    return [s for layer in range(model.cfg.n_layers) for s in (f"a{layer}", f"m{layer}")]


@dataclass
class FrozenRun:
    """What one real run fixes: patterns, norm scales, and each site's real input and output.

    Shapes for a prompt of ``pos`` tokens (batch axis dropped): ``embed`` [pos, d_model],
    ``patterns[L]`` [head, q, k], ``inv_ln1[L]``/``inv_ln2[L]``/``inv_lnf`` [pos, 1],
    ``site_in[s]`` [pos, d_in], ``site_out[s]`` [pos, d_model], ``logits`` [pos, vocab].
    """

    tokens: Tensor
    embed: Tensor
    patterns: list[Tensor]
    inv_ln1: list[Tensor]
    inv_ln2: list[Tensor]
    inv_lnf: Tensor
    site_in: dict[str, Tensor]
    site_out: dict[str, Tensor]
    resid_pre: list[Tensor]
    logits: Tensor


def _inv_scale(model: Model, x: Tensor, w: Tensor | None, eps: float) -> Tensor:
    """1/σ (LayerNorm) or 1/RMS (RMSNorm) of each row of ``x`` [pos, d] -> [pos, 1]."""
    x = x.double()
    if w is None:
        return torch.ones(x.shape[0], 1, dtype=x.dtype, device=x.device)
    if model.cfg.norm == "rmsnorm":
        return torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps)
    return torch.rsqrt(x.var(-1, unbiased=False, keepdim=True) + eps)


def freeze(model: Model, tokens: Tensor) -> FrozenRun:
    """Run ``model`` on one prompt ``tokens`` [pos] and keep what the replacement model fixes."""
    check_supported(model)
    tokens = model.check_tokens(tokens)
    if tokens.shape[0] != 1:
        raise InputError(f"attribution graphs take one prompt; got a batch of {tokens.shape[0]}")
    with torch.no_grad():
        logits, cache = model.run_with_cache(tokens, patterns=True)
    cfg = model.cfg
    site_in: dict[str, Tensor] = {}
    site_out: dict[str, Tensor] = {}
    inv_ln1, inv_ln2 = [], []
    for layer in range(cfg.n_layers):
        lw = model.w.layers[layer]
        pre = cache.resid_pre[layer][0]
        mlp_read = pre if cfg.parallel_attn_mlp else cache.resid_mid[layer][0]
        inv_ln1.append(_inv_scale(model, pre, lw.ln1_w, lw.ln1_eps))
        inv_ln2.append(_inv_scale(model, mlp_read, lw.ln2_w, lw.ln2_eps))
        attn = cache.heads[layer][0].sum(1)
        bias = model.attn_bias(layer)
        site_out[f"a{layer}"] = attn + bias if bias is not None else attn
        site_in[f"a{layer}"] = site_out[f"a{layer}"]
        site_in[f"m{layer}"] = model.norm(mlp_read, lw.ln2_w, lw.ln2_b, lw.ln2_eps)
        site_out[f"m{layer}"] = cache.mlps[layer][0]
    assert cache.resid_final is not None
    w = model.w
    return FrozenRun(
        tokens=tokens[0],
        embed=cache.input[0],
        patterns=[p[0] for p in cache.patterns],
        inv_ln1=inv_ln1,
        inv_ln2=inv_ln2,
        inv_lnf=_inv_scale(model, cache.resid_final[0], w.lnf_w, w.lnf_eps),
        site_in=site_in,
        site_out=site_out,
        resid_pre=[r[0] for r in cache.resid_pre],
        logits=logits[0],
    )


def frozen_norm(
    model: Model,
    x: Tensor,
    inv: Tensor,
    w: Tensor | None,
    b: Tensor | None,
    affine: bool,
) -> Tensor:
    """A norm with its scale frozen: ``(x − mean x) · inv · w (+ b)`` (no centring for RMSNorm)."""
    if w is None:
        return x
    if model.cfg.norm != "rmsnorm":
        x = x - x.mean(-1, keepdim=True)
    y = x * inv.to(x.dtype) * model.norm_scale(w).to(x.dtype)
    if affine and b is not None:
        y = y + b.to(x.dtype)
    return y


def live_pattern(model: Model, fr: FrozenRun, layer: int, h: Tensor) -> Tensor:
    """Attention probabilities [B, head, q, k] recomputed from the (frozen-norm) stream ``h``."""
    cfg = model.cfg
    if cfg.qk_norm is not None:
        raise UnsupportedModelError("recomputed patterns with q/k norms are not supported")
    lw = model.w.layers[layer]
    dt = h.dtype
    idx = model._kv_index.to(lw.W_K.device)
    q = torch.einsum("bpd,hde->bphe", h, lw.W_Q.to(dt))
    k = torch.einsum("bpd,hde->bphe", h, lw.W_K[idx].to(dt))
    if lw.b_Q is not None:
        q = q + lw.b_Q.to(dt)
    if lw.b_K is not None:
        k = k + lw.b_K[idx].to(dt)
    if cfg.positional == "rotary":
        ctx = model.context(fr.tokens[None].expand(h.shape[0], -1))
        q, k = model._rotate(q, ctx, layer), model._rotate(k, ctx, layer)
    scores = torch.einsum("bqhe,bkhe->bhqk", q, k) * cfg.attn_scale[layer]
    if cfg.attn_softcap:
        scores = cfg.attn_softcap * torch.tanh(scores / cfg.attn_softcap)
    n = h.shape[1]
    causal = torch.ones(n, n, dtype=torch.bool, device=h.device).tril()
    window = cfg.window[layer]
    if window is not None:
        causal &= ~torch.ones(n, n, dtype=torch.bool, device=h.device).tril(-window)
    scores = scores.masked_fill(~causal, float("-inf"))
    return torch.softmax(scores, dim=-1)


def frozen_attention(
    model: Model,
    fr: FrozenRun,
    layer: int,
    resid: Tensor,
    affine: bool,
    live: bool = False,
) -> tuple[Tensor, Tensor]:
    """Layer ``layer``'s attention with its pattern frozen (OV path): the summed output
    [B, pos, d_model] (b_O included when ``affine``) and per-head outputs [B, pos, head, d].
    ``live``: the pattern is recomputed from ``resid`` instead (norm scales still frozen)."""
    lw = model.w.layers[layer]
    dt = resid.dtype
    h = frozen_norm(model, resid, fr.inv_ln1[layer], lw.ln1_w, lw.ln1_b, affine)
    idx = model._kv_index.to(lw.W_V.device)
    W_V = lw.W_V[idx].to(dt)  # [head, d, d_head], each query head with its kv group's weights
    v = torch.einsum("bpd,hde->bphe", h, W_V)
    if affine and lw.b_V is not None:
        v = v + lw.b_V[idx].to(dt)
    if live:
        z = torch.einsum("bhqk,bkhe->bqhe", live_pattern(model, fr, layer, h), v)
    else:
        z = torch.einsum("hqk,bkhe->bqhe", fr.patterns[layer].to(dt), v)
    per_head = torch.einsum("bqhe,hem->bqhm", z, lw.W_O.to(dt))
    out = per_head.sum(2)
    bias = model.attn_bias(layer)
    if affine and bias is not None:
        out = out + bias.to(dt)
    return out, per_head


def frozen_forward(
    model: Model,
    fr: FrozenRun,
    embed: Tensor,
    write: Write,
    *,
    affine: bool,
    on_resid: Callable[[int, Tensor], None] | None = None,
    live_attention: bool = False,
) -> Tensor:
    """Run the frozen model from ``embed`` [B, pos, d]; ``write(site, x, per_head)`` says what
    each site writes. Returns the final stream [B, pos, d] (before the final norm).
    ``on_resid(L, resid)`` sees each layer's input stream; ``live_attention`` recomputes the
    patterns (norm scales stay frozen)."""
    cfg = model.cfg
    resid = embed
    for layer in range(cfg.n_layers):
        lw = model.w.layers[layer]
        if on_resid is not None:
            on_resid(layer, resid)
        attn_x, per_head = frozen_attention(model, fr, layer, resid, affine, live_attention)
        attn = write(f"a{layer}", attn_x, per_head)
        mlp_read = resid if cfg.parallel_attn_mlp else resid + attn
        x = frozen_norm(model, mlp_read, fr.inv_ln2[layer], lw.ln2_w, lw.ln2_b, affine)
        resid = mlp_read + write(f"m{layer}", x, None)
        if cfg.parallel_attn_mlp:
            resid = resid + attn
    return resid


def frozen_readout(model: Model, fr: FrozenRun, resid: Tensor, affine: bool) -> Tensor:
    """The final norm (frozen) of a stream [B, pos, d]: what the unembedding reads."""
    w = model.w
    return frozen_norm(model, resid, fr.inv_lnf, w.lnf_w, w.lnf_b, affine)
