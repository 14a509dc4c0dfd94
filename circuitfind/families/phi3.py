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
from circuitfind.families.common import act_fn, by_head_out, check_causal_lm, heads_in
from circuitfind.records import LayerWeights, ModelConfig, ModelWeights


@register("phi3")
def adapt_phi3(hf: Any) -> tuple[ModelConfig, ModelWeights]:
    c = hf.config
    base = check_causal_lm(hf, "model")
    d, h, kv = c.hidden_size, c.num_attention_heads, c.num_key_value_heads
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
                    ln1_w=layer.input_layernorm.weight,
                    ln1_b=None,
                    ln1_eps=layer.input_layernorm.variance_epsilon,
                    W_Q=heads_in(q, h, dh),
                    W_K=heads_in(k, kv, dh),
                    W_V=heads_in(v, kv, dh),
                    W_O=by_head_out(attn.o_proj.weight, h, dh),
                    b_Q=None,
                    b_K=None,
                    b_V=None,
                    b_O=None,
                    ln2_w=layer.post_attention_layernorm.weight,
                    ln2_b=None,
                    ln2_eps=layer.post_attention_layernorm.variance_epsilon,
                    W_in=gate_up[d_mlp:].T,
                    b_in=None,
                    W_out=mlp.down_proj.weight.T,
                    b_out=None,
                    act=act_fn(c.hidden_act),
                    W_gate=gate_up[:d_mlp].T,
                    b_gate=None,
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
    n = c.num_hidden_layers
    window = getattr(c, "sliding_window", None)
    cfg = ModelConfig(
        family="phi3",
        n_layers=n,
        n_heads=h,
        n_kv_heads=kv,
        d_model=d,
        d_head=dh,
        d_mlp=d_mlp,
        d_vocab=hf.lm_head.weight.shape[0],
        n_ctx=getattr(c, "max_position_embeddings", None),
        parallel_attn_mlp=False,
        norm="rmsnorm",
        gated_mlp=True,
        positional="rotary",
        attn_scale=(dh**-0.5,) * n,
        window=(window,) * n,
        tied_embeddings=hf.lm_head.weight is base.embed_tokens.weight,
        name=getattr(c, "name_or_path", "") or "",
    )
    return cfg, weights
