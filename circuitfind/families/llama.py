"""Llama, Qwen2, Mistral: RMSNorm, rotary (all scaling types via HF's own rotary module),
grouped-query attention, gated (SwiGLU) MLP, optional QKV bias and sliding windows."""

from __future__ import annotations

from typing import Any

import torch

from circuitfind.families import register
from circuitfind.families.common import (
    act_fn,
    check_causal_lm,
    norm_fields,
    rotary_config,
    rotary_weights,
    split_attention_layer,
)
from circuitfind.records import ModelConfig, ModelWeights


def _windows(c: Any) -> tuple[int | None, ...]:
    """Llama has none; Mistral/Qwen2 windows every layer unless ``layer_types`` says which."""
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
            )
            for layer in base.layers
        ]
        weights = rotary_weights(hf, base, layers)
    return rotary_config(hf, base, h=h, kv=kv, dh=dh, window=_windows(c)), weights
