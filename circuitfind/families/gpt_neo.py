"""GPT-Neo: learned positions, alternating global/local attention, no 1/sqrt(d_head) scaling."""

from __future__ import annotations

from typing import Any

import torch

from circuitfind.families import register
from circuitfind.families.common import (
    act_fn,
    by_head_out,
    check_causal_lm,
    gpt2_style_norms,
    gpt2_style_weights,
    heads_in,
)
from circuitfind.records import LayerWeights, ModelConfig, ModelWeights


@register("gpt_neo")
def adapt_gpt_neo(hf: Any) -> tuple[ModelConfig, ModelWeights]:
    c = hf.config
    base = check_causal_lm(hf, "transformer")
    d, h = c.hidden_size, c.num_heads
    dh = d // h
    layers, windows = [], []
    with torch.no_grad():
        for i, block in enumerate(base.h):
            attn = block.attn.attention
            windows.append(c.window_size if c.attention_layers[i] == "local" else None)
            layers.append(
                LayerWeights(
                    **gpt2_style_norms(block),
                    W_Q=heads_in(attn.q_proj.weight, h, dh),
                    W_K=heads_in(attn.k_proj.weight, h, dh),
                    W_V=heads_in(attn.v_proj.weight, h, dh),
                    W_O=by_head_out(attn.out_proj.weight, h, dh),
                    b_Q=None,
                    b_K=None,
                    b_V=None,
                    b_O=attn.out_proj.bias,
                    W_in=block.mlp.c_fc.weight.T,
                    b_in=block.mlp.c_fc.bias,
                    W_out=block.mlp.c_proj.weight.T,
                    b_out=block.mlp.c_proj.bias,
                    act=act_fn(c.activation_function),
                )
            )
        weights = gpt2_style_weights(hf, base, layers)
    cfg = ModelConfig(
        family="gpt_neo",
        n_layers=c.num_layers,
        n_heads=h,
        n_kv_heads=h,
        d_model=d,
        d_head=dh,
        d_mlp=layers[0].W_in.shape[1],
        d_vocab=hf.lm_head.weight.shape[0],
        n_ctx=c.max_position_embeddings,
        parallel_attn_mlp=False,
        norm="layernorm",
        gated_mlp=False,
        positional="learned",
        attn_scale=(1.0,) * c.num_layers,  # GPT-Neo does not scale q.k
        window=tuple(windows),
        scores_fp32=True,
        tied_embeddings=hf.lm_head.weight is base.wte.weight,
        name=getattr(c, "name_or_path", "") or "",
    )
    return cfg, weights
