"""Helpers shared by the family adapters."""

from __future__ import annotations

from typing import Any

from torch import Tensor
from transformers.activations import ACT2FN

from circuitfind.records import LayerWeights, ModelWeights

__all__ = [
    "act_fn",
    "by_head",
    "by_head_out",
    "check_causal_lm",
    "gpt2_style_norms",
    "gpt2_style_weights",
    "heads_in",
]


def act_fn(name: str) -> Any:
    return ACT2FN[name]


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
