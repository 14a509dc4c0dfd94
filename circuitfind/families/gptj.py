"""GPT-J: parallel attention and MLP (both read ``ln_1`` of the same stream, so there is no edge
a{L}.h* -> m{L}), rotary on the first ``rotary_dim`` dimensions of each head with interleaved
pairs (``rotate_every_two``: dimension 2i turns with 2i + 1), attention scores in float32, no
q/k/v/o biases, a biased unembedding."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from circuitfind.families import register
from circuitfind.families.common import act_fn, by_head_out, check_causal_lm, heads_in
from circuitfind.records import LayerWeights, ModelConfig, ModelWeights


def _interleaved_rotary(module: Any, d_head: int) -> Any:
    """HF's GPT-J rotary module returns sin, cos [b, p, rotary_dim / 2]; each angle turns one
    interleaved pair, so both are repeated pairwise to [b, p, rotary_dim]."""

    def rotary(x: Tensor, positions: Tensor) -> tuple[Tensor, Tensor]:
        sin, cos = module(x, positions)
        cos = cos.repeat_interleave(2, dim=-1)[..., :d_head]
        sin = sin.repeat_interleave(2, dim=-1)[..., :d_head]
        return cos, sin

    return rotary


@register("gptj")
def adapt_gptj(hf: Any) -> tuple[ModelConfig, ModelWeights]:
    c = hf.config
    base = check_causal_lm(hf, "transformer")
    d, h = c.n_embd, c.n_head
    dh = d // h
    layers = []
    with torch.no_grad():
        for block in base.h:
            attn, mlp = block.attn, block.mlp
            layers.append(
                LayerWeights(
                    ln1_w=block.ln_1.weight,
                    ln1_b=block.ln_1.bias,
                    ln1_eps=block.ln_1.eps,
                    W_Q=heads_in(attn.q_proj.weight, h, dh),
                    W_K=heads_in(attn.k_proj.weight, h, dh),
                    W_V=heads_in(attn.v_proj.weight, h, dh),
                    W_O=by_head_out(attn.out_proj.weight, h, dh),
                    b_Q=None,
                    b_K=None,
                    b_V=None,
                    b_O=None,
                    ln2_w=block.ln_1.weight,  # the MLP reads the same ln_1 output
                    ln2_b=block.ln_1.bias,
                    ln2_eps=block.ln_1.eps,
                    W_in=mlp.fc_in.weight.T,
                    b_in=mlp.fc_in.bias,
                    W_out=mlp.fc_out.weight.T,
                    b_out=mlp.fc_out.bias,
                    act=act_fn(c.activation_function),
                )
            )
        weights = ModelWeights(
            W_E=base.wte.weight,
            W_pos=None,
            layers=layers,
            lnf_w=base.ln_f.weight,
            lnf_b=base.ln_f.bias,
            lnf_eps=base.ln_f.eps,
            W_U=hf.lm_head.weight.T,
            b_U=getattr(hf.lm_head, "bias", None),
            rotary=_interleaved_rotary(base.rotary_emb, dh),
        )
    cfg = ModelConfig(
        family="gptj",
        n_layers=c.n_layer,
        n_heads=h,
        n_kv_heads=h,
        d_model=d,
        d_head=dh,
        d_mlp=layers[0].W_in.shape[1],
        d_vocab=hf.lm_head.weight.shape[0],
        n_ctx=c.n_positions,
        parallel_attn_mlp=True,
        norm="layernorm",
        gated_mlp=False,
        positional="rotary",
        attn_scale=(dh**-0.5,) * c.n_layer,
        window=(None,) * c.n_layer,
        scores_fp32=True,
        tied_embeddings=hf.lm_head.weight is base.wte.weight,
        name=getattr(c, "name_or_path", "") or "",
        rotary_interleaved=True,
    )
    return cfg, weights
