"""Qwen3: Llama's layout (RMSNorm, rotary, grouped-query attention, SwiGLU) plus a per-head
RMSNorm of the queries and keys before rotary.

The q/k norm is per head (over d_head), so it is part of each head's own receiver: a q (k)
receiver of head h normalises its own projection. EAP's probes sit on the raw projections,
before the norm (``Model.attention``), so the closed-form vector-Jacobian product of the
input norm and W_h is unchanged and the q/k norm's Jacobian comes from autograd.
"""

from __future__ import annotations

from typing import Any

import torch

from circuitfind.families import register
from circuitfind.families.common import (
    act_fn,
    check_causal_lm,
    layer_windows,
    norm_fields,
    split_attention_layer,
)
from circuitfind.records import ModelConfig, ModelWeights


@register("qwen3")
def adapt_qwen3(hf: Any) -> tuple[ModelConfig, ModelWeights]:
    c = hf.config
    base = check_causal_lm(hf, "model")
    d, h, kv = c.hidden_size, c.num_attention_heads, c.num_key_value_heads
    dh = base.layers[0].self_attn.q_proj.weight.shape[0] // h
    layers = []
    with torch.no_grad():
        for layer in base.layers:
            attn = layer.self_attn
            layers.append(
                split_attention_layer(
                    attn,
                    layer.mlp,
                    h,
                    kv,
                    dh,
                    act_fn(c.hidden_act),
                    **norm_fields("ln1", layer.input_layernorm),
                    **norm_fields("ln2", layer.post_attention_layernorm),
                    q_norm_w=attn.q_norm.weight,
                    k_norm_w=attn.k_norm.weight,
                    qk_norm_eps=attn.q_norm.variance_epsilon,
                )
            )
        weights = ModelWeights(
            W_E=base.embed_tokens.weight,
            W_pos=None,
            layers=layers,
            lnf_w=base.norm.weight,
            lnf_b=None,
            lnf_eps=base.norm.variance_epsilon,
            W_U=hf.lm_head.weight.T,
            b_U=getattr(hf.lm_head, "bias", None),
            rotary=base.rotary_emb,
        )
    cfg = ModelConfig(
        family="qwen3",
        n_layers=c.num_hidden_layers,
        n_heads=h,
        n_kv_heads=kv,
        d_model=d,
        d_head=dh,
        d_mlp=c.intermediate_size,
        d_vocab=hf.lm_head.weight.shape[0],
        n_ctx=getattr(c, "max_position_embeddings", None),
        parallel_attn_mlp=False,
        norm="rmsnorm",
        gated_mlp=True,
        positional="rotary",
        attn_scale=(dh**-0.5,) * c.num_hidden_layers,
        window=layer_windows(c),
        tied_embeddings=hf.lm_head.weight is base.embed_tokens.weight,
        name=getattr(c, "name_or_path", "") or "",
        qk_norm="head",
    )
    return cfg, weights
