"""GPT-NeoX / Pythia: (partial) rotary, fused per-head QKV, parallel or sequential residual."""

from __future__ import annotations

from typing import Any

import torch

from circuitfind.families import register
from circuitfind.families.common import act_fn, by_head_out, check_causal_lm
from circuitfind.records import LayerWeights, ModelConfig, ModelWeights


@register("gpt_neox")
def adapt_gpt_neox(hf: Any) -> tuple[ModelConfig, ModelWeights]:
    c = hf.config
    base = check_causal_lm(hf, "gpt_neox")
    d, h = c.hidden_size, c.num_attention_heads
    dh = d // h
    layers = []
    with torch.no_grad():
        for layer in base.layers:
            attn = layer.attention
            # query_key_value: [h * 3 * dh, d], laid out per head as (q, k, v).
            w = attn.query_key_value.weight.view(h, 3, dh, d)
            b = attn.query_key_value.bias
            bq = b.view(h, 3, dh) if b is not None else None
            W_Q, W_K, W_V = (w[:, j].transpose(1, 2) for j in range(3))
            layers.append(
                LayerWeights(
                    ln1_w=layer.input_layernorm.weight,
                    ln1_b=layer.input_layernorm.bias,
                    ln1_eps=layer.input_layernorm.eps,
                    W_Q=W_Q,
                    W_K=W_K,
                    W_V=W_V,
                    W_O=by_head_out(attn.dense.weight, h, dh),
                    b_Q=bq[:, 0] if bq is not None else None,
                    b_K=bq[:, 1] if bq is not None else None,
                    b_V=bq[:, 2] if bq is not None else None,
                    b_O=attn.dense.bias,
                    ln2_w=layer.post_attention_layernorm.weight,
                    ln2_b=layer.post_attention_layernorm.bias,
                    ln2_eps=layer.post_attention_layernorm.eps,
                    W_in=layer.mlp.dense_h_to_4h.weight.T,
                    b_in=layer.mlp.dense_h_to_4h.bias,
                    W_out=layer.mlp.dense_4h_to_h.weight.T,
                    b_out=layer.mlp.dense_4h_to_h.bias,
                    act=act_fn(c.hidden_act),
                )
            )
        weights = ModelWeights(
            W_E=base.embed_in.weight,
            W_pos=None,
            layers=layers,
            lnf_w=base.final_layer_norm.weight,
            lnf_b=base.final_layer_norm.bias,
            lnf_eps=base.final_layer_norm.eps,
            W_U=hf.get_output_embeddings().weight.T,
            b_U=getattr(hf.get_output_embeddings(), "bias", None),
            rotary=base.rotary_emb,
        )
    cfg = ModelConfig(
        family="gpt_neox",
        n_layers=c.num_hidden_layers,
        n_heads=h,
        n_kv_heads=h,
        d_model=d,
        d_head=dh,
        d_mlp=c.intermediate_size,
        d_vocab=hf.get_output_embeddings().weight.shape[0],
        n_ctx=c.max_position_embeddings,
        parallel_attn_mlp=bool(c.use_parallel_residual),
        norm="layernorm",
        gated_mlp=False,
        positional="rotary",
        attn_scale=(dh**-0.5,) * c.num_hidden_layers,
        window=(None,) * c.num_hidden_layers,
        tied_embeddings=hf.get_output_embeddings().weight is base.embed_in.weight,
        name=getattr(c, "name_or_path", "") or "",
    )
    return cfg, weights
