"""OLMo-2: no norms before attention or the MLP; RMSNorms after them (before the residual
add); an RMSNorm over the whole q (and the whole k) projection, all heads together, before
rotary; SwiGLU MLP, untied unembedding.

How the graph treats them:
- The post-norms are those of Gemma-2 (see ``circuitfind.families.gemma``): head nodes output
  z_h @ W_O[h] before the norm, a receiver reads postnorm_L(the sum of layer L's heads as it
  sees them), MLP nodes' outputs include their post-norm.
- The q/k norm couples the heads of one projection (its scale is the RMS over every head),
  so a q receiver of head h computes the *whole* q projection from its own input, normalises
  it, and takes head h (``Model.attention``); likewise a k receiver with the whole k
  projection. Patching one receiver's input never moves another head's query or key. EAP
  puts its probes after this norm and maps their gradients back in closed form
  (``circuitfind.methods.eap._InputGrads``), tested against the gradient of a float edge mask.
"""

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


@register("olmo2")
def adapt_olmo2(hf: Any) -> tuple[ModelConfig, ModelWeights]:
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
                **norm_fields("ln1", None),
                **norm_fields("ln2", None),
                **norm_fields("post_attn", layer.post_attention_layernorm),
                **norm_fields("post_mlp", layer.post_feedforward_layernorm),
                q_norm_w=layer.self_attn.q_norm.weight,
                k_norm_w=layer.self_attn.k_norm.weight,
                qk_norm_eps=layer.self_attn.q_norm.variance_epsilon,
            )
            for layer in base.layers
        ]
        weights = rotary_weights(hf, base, layers)
    window = (None,) * c.num_hidden_layers
    cfg = rotary_config(hf, base, h=h, kv=kv, dh=dh, window=window, qk_norm="full", post_norms=True)
    return cfg, weights
