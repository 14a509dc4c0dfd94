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
    rotary_config,
    rotary_weights,
    split_attention_layer,
)
from circuitfind.records import ModelConfig, ModelWeights


@register("qwen3")
def adapt_qwen3(hf: Any) -> tuple[ModelConfig, ModelWeights]:
    c = hf.config
    base = check_causal_lm(hf, "model")
    h, kv = c.num_attention_heads, c.num_key_value_heads
    dh = base.layers[0].self_attn.q_proj.weight.shape[0] // h
    with torch.no_grad():
        layers = [
            split_attention_layer(
                layer.self_attn,
                layer.mlp,
                h,
                kv,
                dh,
                act_fn(c.hidden_act),
                **norm_fields("ln1", layer.input_layernorm),
                **norm_fields("ln2", layer.post_attention_layernorm),
                q_norm_w=layer.self_attn.q_norm.weight,
                k_norm_w=layer.self_attn.k_norm.weight,
                qk_norm_eps=layer.self_attn.q_norm.variance_epsilon,
            )
            for layer in base.layers
        ]
        weights = rotary_weights(hf, base, layers)
    cfg = rotary_config(hf, base, h=h, kv=kv, dh=dh, window=layer_windows(c), qk_norm="head")
    return cfg, weights
