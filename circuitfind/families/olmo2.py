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
    split_attention_layer,
)
from circuitfind.records import ModelConfig, ModelWeights


@register("olmo2")
def adapt_olmo2(hf: Any) -> tuple[ModelConfig, ModelWeights]:
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
                    **norm_fields("ln1", None),
                    **norm_fields("ln2", None),
                    **norm_fields("post_attn", layer.post_attention_layernorm),
                    **norm_fields("post_mlp", layer.post_feedforward_layernorm),
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
    n = c.num_hidden_layers
    cfg = ModelConfig(
        family="olmo2",
        n_layers=n,
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
        attn_scale=(dh**-0.5,) * n,
        window=(None,) * n,
        tied_embeddings=hf.lm_head.weight is base.embed_tokens.weight,
        name=getattr(c, "name_or_path", "") or "",
        qk_norm="full",
        post_norms=True,
    )
    return cfg, weights
