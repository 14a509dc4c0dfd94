"""Helpers shared by the family adapters."""

from __future__ import annotations

from typing import Any

from torch import Tensor
from transformers.activations import ACT2FN

__all__ = ["act_fn", "by_head", "by_head_out", "check_causal_lm", "heads_in"]


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
