"""Helpers shared by the family adapters."""

from __future__ import annotations

from typing import Any

from torch import Tensor
from transformers.activations import ACT2FN

from circuitfind.records import LayerWeights, ModelConfig, ModelWeights

__all__ = [
    "act_fn",
    "by_head",
    "by_head_out",
    "check_causal_lm",
    "gpt2_style_norms",
    "gpt2_style_weights",
    "heads_in",
    "layer_windows",
    "norm_fields",
    "rotary_config",
    "rotary_weights",
    "split_attention_layer",
]


def act_fn(name: str) -> Any:
    """HF's activation ``name``; ``gelu_new`` (GPT-2, GPT-Neo, GPT-J) as torch's fused tanh
    GELU, the same function (HF's ``gelu_pytorch_tanh``; within 1 ulp of HF's elementwise
    formula in float32) in one pass instead of seven."""
    return ACT2FN["gelu_pytorch_tanh" if name == "gelu_new" else name]


def heads_in(weight: Tensor, n_heads: int, d_head: int) -> Tensor:
    """nn.Linear weight [n_heads * d_head, d_model] -> [head, d_model, d_head] (a view)."""
    return weight.view(n_heads, d_head, weight.shape[-1]).transpose(1, 2)


def by_head(bias: Tensor | None, n_heads: int, d_head: int) -> Tensor | None:
    return None if bias is None else bias.view(n_heads, d_head)


def by_head_out(weight: Tensor, n_heads: int, d_head: int) -> Tensor:
    """nn.Linear weight [d_model, n_heads * d_head] -> W_O [head, d_head, d_model] (a view)."""
    return weight.view(weight.shape[0], n_heads, d_head).permute(1, 2, 0)


def check_causal_lm(hf_model: Any, base_attr: str) -> Any:
    base = getattr(hf_model, base_attr, None)
    if base is None or (not hasattr(hf_model, "lm_head") and not hasattr(hf_model, "embed_out")):
        raise TypeError(
            f"expected a causal LM with a language-modelling head (e.g. *ForCausalLM); got "
            f"{type(hf_model).__name__}"
        )
    return base


def gpt2_style_norms(block: Any) -> dict[str, Any]:
    """The ``ln_1`` / ``ln_2`` LayerNorm fields of a GPT-2-style block (GPT-2, GPT-Neo)."""
    return {
        "ln1_w": block.ln_1.weight,
        "ln1_b": block.ln_1.bias,
        "ln1_eps": block.ln_1.eps,
        "ln2_w": block.ln_2.weight,
        "ln2_b": block.ln_2.bias,
        "ln2_eps": block.ln_2.eps,
    }


def gpt2_style_weights(hf: Any, base: Any, layers: list[LayerWeights]) -> ModelWeights:
    """Embeddings, learned positions, ``ln_f`` and ``lm_head`` of a GPT-2-style model."""
    return ModelWeights(
        W_E=base.wte.weight,
        W_pos=base.wpe.weight,
        layers=layers,
        lnf_w=base.ln_f.weight,
        lnf_b=base.ln_f.bias,
        lnf_eps=base.ln_f.eps,
        W_U=hf.lm_head.weight.T,
        b_U=getattr(hf.lm_head, "bias", None),
    )


def _bias(linear: Any) -> Any:
    return getattr(linear, "bias", None)


def _eps(norm: Any) -> float:
    eps = getattr(norm, "variance_epsilon", None)
    return float(eps if eps is not None else norm.eps)


def norm_fields(prefix: str, norm: Any | None) -> dict[str, Any]:
    """``{prefix}_w`` / ``{prefix}_eps`` (and ``{prefix}_b`` for ln1/ln2) of an RMSNorm or None."""
    out: dict[str, Any] = {f"{prefix}_w": None if norm is None else norm.weight}
    if norm is not None:
        out[f"{prefix}_eps"] = _eps(norm)
    elif prefix in ("ln1", "ln2"):
        out[f"{prefix}_eps"] = 0.0
    if prefix in ("ln1", "ln2"):
        out[f"{prefix}_b"] = getattr(norm, "bias", None)
    return out


def split_attention_layer(
    attn: Any, mlp: Any, h: int, kv: int, dh: int, act: Any, **fields: Any
) -> LayerWeights:
    """A layer with separate q/k/v/o projections and a gate/up/down MLP (Llama-like).

    ``fields`` gives the norms (``norm_fields``) and any family-specific extras.
    """
    return LayerWeights(
        W_Q=heads_in(attn.q_proj.weight, h, dh),
        W_K=heads_in(attn.k_proj.weight, kv, dh),
        W_V=heads_in(attn.v_proj.weight, kv, dh),
        W_O=by_head_out(attn.o_proj.weight, h, dh),
        b_Q=by_head(_bias(attn.q_proj), h, dh),
        b_K=by_head(_bias(attn.k_proj), kv, dh),
        b_V=by_head(_bias(attn.v_proj), kv, dh),
        b_O=_bias(attn.o_proj),
        W_in=mlp.up_proj.weight.T,
        b_in=_bias(mlp.up_proj),
        W_out=mlp.down_proj.weight.T,
        b_out=_bias(mlp.down_proj),
        act=act,
        W_gate=mlp.gate_proj.weight.T,
        b_gate=_bias(mlp.gate_proj),
        **fields,
    )


def layer_windows(c: Any) -> tuple[int | None, ...]:
    """Per-layer sliding windows from ``config.layer_types`` (None: global attention)."""
    n = c.num_hidden_layers
    window = getattr(c, "sliding_window", None)
    layer_types = getattr(c, "layer_types", None)
    if window is None or layer_types is None:
        return (None,) * n
    return tuple(window if t == "sliding_attention" else None for t in layer_types)


def rotary_weights(hf: Any, base: Any, layers: list[LayerWeights]) -> ModelWeights:
    """Embeddings, final RMSNorm, ``lm_head`` and rotary module of a Llama-layout model
    (``model.embed_tokens``, ``model.norm``, ``model.rotary_emb``)."""
    return ModelWeights(
        W_E=base.embed_tokens.weight,
        W_pos=None,
        layers=layers,
        lnf_w=base.norm.weight,
        lnf_b=None,
        lnf_eps=_eps(base.norm),
        W_U=hf.lm_head.weight.T,
        b_U=getattr(hf.lm_head, "bias", None),
        rotary=base.rotary_emb,
    )


def rotary_config(
    hf: Any, base: Any, *, h: int, kv: int, dh: int, window: tuple[int | None, ...], **extra: Any
) -> ModelConfig:
    """The ``ModelConfig`` of a Llama-layout model (RMSNorm, rotary, gated MLP, sequential
    attention and MLP); ``extra`` sets the family's own fields (``norm_offset``, ``qk_norm``,
    ``post_norms`` ...) and may override ``family``, ``d_mlp`` or ``attn_scale``."""
    c = hf.config
    n = c.num_hidden_layers
    fields: dict[str, Any] = {
        "family": c.model_type,
        "n_layers": n,
        "n_heads": h,
        "n_kv_heads": kv,
        "d_model": c.hidden_size,
        "d_head": dh,
        "d_mlp": c.intermediate_size,
        "d_vocab": hf.lm_head.weight.shape[0],
        "n_ctx": getattr(c, "max_position_embeddings", None),
        "parallel_attn_mlp": False,
        "norm": "rmsnorm",
        "gated_mlp": True,
        "positional": "rotary",
        "attn_scale": (dh**-0.5,) * n,
        "window": window,
        "tied_embeddings": hf.lm_head.weight is base.embed_tokens.weight,
        "name": getattr(c, "name_or_path", "") or "",
    }
    fields.update(extra)
    return ModelConfig(**fields)
