"""Phi-3: Llama's layout with a fused q/k/v projection (rows: all query heads, then the key
heads, then the value heads) and a fused gate/up projection (gate rows first), partial rotary
(``partial_rotary_factor``) and long-rope scaling (``su`` / ``longrope``: HF's own rotary module
computes the angles, switching to the long factors past the original context), and an
optional sliding window on every layer. The fused weights are split into views per head, so
each q/k/v receiver keeps its own projection."""

from __future__ import annotations

from typing import Any

import torch

from circuitfind.families import register
from circuitfind.families.common import (
    act_fn,
    by_head_out,
    check_causal_lm,
    heads_in,
    norm_fields,
    rotary_config,
    rotary_weights,
)
from circuitfind.records import LayerWeights, ModelConfig, ModelWeights


@register("phi3")
def adapt_phi3(hf: Any) -> tuple[ModelConfig, ModelWeights]:
    c = hf.config
    base = check_causal_lm(hf, "model")
    h, kv = c.num_attention_heads, c.num_key_value_heads
    dh = base.layers[0].self_attn.o_proj.weight.shape[1] // h
    d_mlp = c.intermediate_size
    layers = []
    with torch.no_grad():
        for layer in base.layers:
            attn, mlp = layer.self_attn, layer.mlp
            qkv = attn.qkv_proj.weight  # [(h + 2 kv) * dh, d]
            q, k, v = qkv[: h * dh], qkv[h * dh : (h + kv) * dh], qkv[(h + kv) * dh :]
            gate_up = mlp.gate_up_proj.weight  # [2 * d_mlp, d]: gate rows, then up rows
            layers.append(
                LayerWeights(
                    **norm_fields("ln1", layer.input_layernorm),
                    **norm_fields("ln2", layer.post_attention_layernorm),
                    W_Q=heads_in(q, h, dh),
                    W_K=heads_in(k, kv, dh),
                    W_V=heads_in(v, kv, dh),
                    W_O=by_head_out(attn.o_proj.weight, h, dh),
                    b_Q=None,
                    b_K=None,
                    b_V=None,
                    b_O=None,
                    W_in=gate_up[d_mlp:].T,
                    b_in=None,
                    W_out=mlp.down_proj.weight.T,
                    b_out=None,
                    act=act_fn(c.hidden_act),
                    W_gate=gate_up[:d_mlp].T,
                    b_gate=None,
                )
            )
        weights = rotary_weights(hf, base, layers)
    window = getattr(c, "sliding_window", None)
    cfg = rotary_config(
        hf, base, h=h, kv=kv, dh=dh, d_mlp=d_mlp, window=(window,) * c.num_hidden_layers
    )
    return cfg, weights
