"""Gemma, Gemma-2 and Gemma-3 (text): RMSNorm scaled by (1 + weight), embeddings scaled by
sqrt(d_model) (rounded to the weights' dtype, as HF does), GeGLU MLPs (gelu_pytorch_tanh).

- ``gemma``: Llama's layout otherwise (multi-query in the 2B model).
- ``gemma2``: norms before *and after* attention and the MLP, attention scale
  ``query_pre_attn_scalar ** -0.5``, attention-logit and final-logit soft-capping
  (``cap * tanh(x / cap)``), alternating sliding-window / global layers (``layer_types``).
- ``gemma3_text``: Gemma-2's layout without soft-capping by default, a per-head q/k RMSNorm
  (1 + weight) before rotary, and separate rotary tables for local (sliding) and global layers
  (``rope_parameters[layer_type]``), following the sliding-window pattern in ``layer_types``.

How the graph treats the post-norms: a layer writes postnorm(sum of its heads + b_O) into the
stream, which is not additive across heads. Head nodes a{L}.h{H} output z_h @ W_O[h] *before*
the post-norm; a receiver's input is the sum over upstream layers of postnorm_L(the sum of
layer L's heads as that receiver sees them, each kept or ablated for it alone) plus the input
and MLP outputs (an MLP node's output includes its own post-norm, so MLP edges stay plain
terms of the sum). All edges kept is then exactly the clean run and none kept exactly the
ablated (corrupted) run, and ablating a{L}.h{j} -> r means patching head j's output inside
the sum that layer L's post-norm sees, for receiver r only (``circuitfind.patching``). EAP
maps each head's difference through its layer's post-norm Jacobian (first order of the same
patch). Soft-capping is part of the attention scores and of the readout, so masked runs and
exact patching are exact through it and EAP's gradients go through it.
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


def _act(c: Any) -> Any:
    return act_fn(getattr(c, "hidden_activation", None) or c.hidden_act)


@register("gemma", "gemma2", "gemma3_text")
def adapt_gemma(hf: Any) -> tuple[ModelConfig, ModelWeights]:
    c = hf.config
    family = c.model_type
    base = check_causal_lm(hf, "model")
    d, h, kv = c.hidden_size, c.num_attention_heads, c.num_key_value_heads
    dh = base.layers[0].self_attn.q_proj.weight.shape[0] // h
    post = family in ("gemma2", "gemma3_text")
    layers = []
    with torch.no_grad():
        for layer in base.layers:
            attn = layer.self_attn
            extra: dict[str, Any] = {}
            if post:
                extra.update(norm_fields("post_attn", layer.post_attention_layernorm))
                extra.update(norm_fields("post_mlp", layer.post_feedforward_layernorm))
                extra.update(norm_fields("ln2", layer.pre_feedforward_layernorm))
            else:
                extra.update(norm_fields("ln2", layer.post_attention_layernorm))
            if family == "gemma3_text":
                extra.update(q_norm_w=attn.q_norm.weight, k_norm_w=attn.k_norm.weight)
                extra["qk_norm_eps"] = attn.q_norm.eps
            layers.append(
                split_attention_layer(
                    attn,
                    layer.mlp,
                    h,
                    kv,
                    dh,
                    _act(c),
                    **norm_fields("ln1", layer.input_layernorm),
                    **extra,
                )
            )
        weights = rotary_weights(hf, base, layers)
    n = c.num_hidden_layers
    scalar = getattr(c, "query_pre_attn_scalar", None)
    cfg = rotary_config(
        hf,
        base,
        h=h,
        kv=kv,
        dh=dh,
        window=layer_windows(c) if post else (None,) * n,
        attn_scale=((scalar if post and scalar else dh) ** -0.5,) * n,
        norm_offset=1.0,
        embed_scale=d**0.5,
        attn_softcap=getattr(c, "attn_logit_softcapping", None) if post else None,
        final_softcap=getattr(c, "final_logit_softcapping", None) if post else None,
        qk_norm="head" if family == "gemma3_text" else None,
        post_norms=post,
        rotary_kind=tuple(c.layer_types) if family == "gemma3_text" else (),
    )
    return cfg, weights
