"""Llama, Qwen2, Mistral: RMSNorm, rotary (all scaling types via HF's own rotary module),
grouped-query attention, gated (SwiGLU) MLP, optional QKV bias and sliding windows."""

from __future__ import annotations

from typing import Any

import torch

from circuitfind.families import register
from circuitfind.families.common import act_fn, by_head, by_head_out, check_causal_lm, heads_in
from circuitfind.records import LayerWeights, ModelConfig, ModelWeights


def _bias(linear: Any) -> Any:
    return getattr(linear, "bias", None)


def _windows(c: Any) -> tuple[int | None, ...]:
    n = c.num_hidden_layers
    window = getattr(c, "sliding_window", None)
    layer_types = getattr(c, "layer_types", None)
    if c.model_type == "llama" or window is None:
        return (None,) * n
    if layer_types is not None:
        return tuple(window if t == "sliding_attention" else None for t in layer_types)
    return (window,) * n


@register("llama", "qwen2", "mistral")
def adapt_llama(hf: Any) -> tuple[ModelConfig, ModelWeights]:
    c = hf.config
    base = check_causal_lm(hf, "model")
    d, h, kv = c.hidden_size, c.num_attention_heads, c.num_key_value_heads
    first = base.layers[0].self_attn
    dh = first.q_proj.weight.shape[0] // h
    layers = []
    with torch.no_grad():
        for layer in base.layers:
            attn, mlp = layer.self_attn, layer.mlp
            layers.append(
                LayerWeights(
                    ln1_w=layer.input_layernorm.weight,
                    ln1_b=None,
                    ln1_eps=layer.input_layernorm.variance_epsilon,
                    W_Q=heads_in(attn.q_proj.weight, h, dh),
                    W_K=heads_in(attn.k_proj.weight, kv, dh),
                    W_V=heads_in(attn.v_proj.weight, kv, dh),
                    W_O=by_head_out(attn.o_proj.weight, h, dh),
                    b_Q=by_head(_bias(attn.q_proj), h, dh),
                    b_K=by_head(_bias(attn.k_proj), kv, dh),
                    b_V=by_head(_bias(attn.v_proj), kv, dh),
                    b_O=_bias(attn.o_proj),
                    ln2_w=layer.post_attention_layernorm.weight,
                    ln2_b=None,
                    ln2_eps=layer.post_attention_layernorm.variance_epsilon,
                    W_in=mlp.up_proj.weight.T,
                    b_in=_bias(mlp.up_proj),
                    W_out=mlp.down_proj.weight.T,
                    b_out=_bias(mlp.down_proj),
                    act=act_fn(c.hidden_act),
                    W_gate=mlp.gate_proj.weight.T,
                    b_gate=_bias(mlp.gate_proj),
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
            b_U=_bias(hf.lm_head),
            rotary=base.rotary_emb,
        )
    cfg = ModelConfig(
        family=c.model_type,
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
        window=_windows(c),
        tied_embeddings=hf.lm_head.weight is base.embed_tokens.weight,
        name=getattr(c, "name_or_path", "") or "",
    )
    return cfg, weights
