"""GPT-2: learned positions, LayerNorm, fused Conv1D QKV, sequential residual."""

from __future__ import annotations

from typing import Any

import torch

from circuitfind.families import register
from circuitfind.families.common import (
    act_fn,
    check_causal_lm,
    gpt2_style_norms,
    gpt2_style_weights,
)
from circuitfind.records import LayerWeights, ModelConfig, ModelWeights


@register("gpt2")
def adapt_gpt2(hf: Any) -> tuple[ModelConfig, ModelWeights]:
    c = hf.config
    base = check_causal_lm(hf, "transformer")
    d, h = c.n_embd, c.n_head
    dh = d // h
    n_inner = c.n_inner if c.n_inner is not None else 4 * d
    scales = []
    layers = []
    with torch.no_grad():
        for i, block in enumerate(base.h):
            scale = dh**-0.5 if c.scale_attn_weights else 1.0
            if c.scale_attn_by_inverse_layer_idx:
                scale /= float(i + 1)
            scales.append(scale)
            w = block.attn.c_attn.weight  # Conv1D: [d_model, 3 * d_model]
            b = block.attn.c_attn.bias
            W_Q, W_K, W_V = (
                w[:, j * d : (j + 1) * d].view(d, h, dh).transpose(0, 1) for j in range(3)
            )
            b_Q, b_K, b_V = (b[j * d : (j + 1) * d].view(h, dh) for j in range(3))
            layers.append(
                LayerWeights(
                    **gpt2_style_norms(block),
                    W_Q=W_Q,
                    W_K=W_K,
                    W_V=W_V,
                    W_O=block.attn.c_proj.weight.view(h, dh, d),
                    b_Q=b_Q,
                    b_K=b_K,
                    b_V=b_V,
                    b_O=block.attn.c_proj.bias,
                    W_in=block.mlp.c_fc.weight,
                    b_in=block.mlp.c_fc.bias,
                    W_out=block.mlp.c_proj.weight,
                    b_out=block.mlp.c_proj.bias,
                    act=act_fn(c.activation_function),
                )
            )
        weights = gpt2_style_weights(hf, base, layers)
    cfg = ModelConfig(
        family="gpt2",
        n_layers=c.n_layer,
        n_heads=h,
        n_kv_heads=h,
        d_model=d,
        d_head=dh,
        d_mlp=n_inner,
        d_vocab=hf.lm_head.weight.shape[0],
        n_ctx=c.n_positions,
        parallel_attn_mlp=False,
        norm="layernorm",
        gated_mlp=False,
        positional="learned",
        attn_scale=tuple(scales),
        window=(None,) * c.n_layer,
        scores_fp32=bool(c.reorder_and_upcast_attn),
        tied_embeddings=hf.lm_head.weight is base.wte.weight,
        name=getattr(c, "name_or_path", "") or "",
    )
    return cfg, weights
