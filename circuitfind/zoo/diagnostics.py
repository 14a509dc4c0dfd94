"""Attention-pattern diagnostics and head ablation for the zoo's Hugging Face models.

Head scores on sequences ``A A`` (a random segment, then its repeat; segment length L), from the
eager attention patterns (``output_attentions=True``), averaged over prompts:

- previous-token: attention from position i to i-1 (all i >= 1);
- duplicate-token: attention from a second-half position i to i-L (the same token earlier);
- induction: attention from a second-half position i to i-L+1 (the token after the earlier copy).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from typing import Any

import torch
from torch import Tensor

__all__ = [
    "ablate_heads",
    "attention_patterns",
    "hf_pattern_scores",
    "out_projection",
    "repeated_tokens",
]

# where each family keeps the attention output projection of layer L (its input is the heads'
# concatenated outputs [b, p, n_heads * d_head])
_OUT_PROJ: dict[str, str] = {
    "gpt2": "transformer.h.{L}.attn.c_proj",
    "gpt_neo": "transformer.h.{L}.attn.attention.out_proj",
    "gpt_neox": "gpt_neox.layers.{L}.attention.dense",
    "llama": "model.layers.{L}.self_attn.o_proj",
    "qwen2": "model.layers.{L}.self_attn.o_proj",
    "mistral": "model.layers.{L}.self_attn.o_proj",
}


def out_projection(model: Any, layer: int) -> torch.nn.Module:
    """The attention output projection module of ``layer``."""
    kind = model.config.model_type
    if kind not in _OUT_PROJ:
        raise ValueError(f"no head ablation for family {kind!r}; known: {', '.join(_OUT_PROJ)}")
    module: Any = model
    for part in _OUT_PROJ[kind].format(L=layer).split("."):
        module = module[int(part)] if part.isdigit() else getattr(module, part)
    return module


@contextlib.contextmanager
def ablate_heads(model: Any, heads: Sequence[tuple[int, int]]) -> Iterator[None]:
    """Zero the outputs of the given (layer, head) pairs while the context is open."""
    n_heads = model.config.num_attention_heads
    handles = []
    by_layer: dict[int, list[int]] = {}
    for layer, head in heads:
        by_layer.setdefault(layer, []).append(head)
    for layer, hs in by_layer.items():

        def hook(_mod: Any, args: tuple[Tensor, ...], hs: list[int] = hs) -> tuple[Tensor, ...]:
            x = args[0]
            d_head = x.shape[-1] // n_heads
            x = x.clone()
            for h in hs:
                x[..., h * d_head : (h + 1) * d_head] = 0
            return (x, *args[1:])

        handles.append(out_projection(model, layer).register_forward_pre_hook(hook))
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()


def attention_patterns(model: Any, tokens: Tensor) -> Tensor:
    """Eager attention patterns ``[layers, batch, heads, query, key]``."""
    previous = getattr(model.config, "_attn_implementation", None)
    model.set_attn_implementation("eager")
    try:
        with torch.no_grad():
            out = model(tokens, output_attentions=True)
    finally:
        if previous is not None and previous != "eager":
            model.set_attn_implementation(previous)
    return torch.stack(out.attentions)


def repeated_tokens(
    candidates: Sequence[int], *, n: int, length: int, seed: int, prefix: Sequence[int] = ()
) -> Tensor:
    """``[n, len(prefix) + 2 * length]``: prefix, a segment of distinct tokens, its repeat."""
    gen = torch.Generator().manual_seed(seed)
    cand = torch.as_tensor(list(candidates))
    rows = []
    for _ in range(n):
        seg = cand[torch.randperm(len(cand), generator=gen)[:length]]
        rows.append(torch.cat([torch.as_tensor(list(prefix), dtype=torch.long), seg, seg]))
    return torch.stack(rows)


def hf_pattern_scores(model: Any, tokens: Tensor, offset: int = 0) -> dict[str, Tensor]:
    """Previous-token, duplicate-token and induction scores ``[layers, heads]`` on ``tokens``
    from :func:`repeated_tokens` (``offset`` = prefix length).

    The definitions are ``circuitfind.roles``' (the ones inspection and the diagrams use), with
    the prefix masked out: on ``A A`` with distinct tokens they are the position rules in the
    module docstring."""
    from circuitfind.patterns import duplicate_token_score, induction_score, previous_token_score

    pat = attention_patterns(model, tokens)  # [L, b, H, q, k]
    mask = torch.ones_like(tokens)
    mask[:, :offset] = 0
    return {
        "previous_token": torch.stack([previous_token_score(p, mask) for p in pat]),
        "duplicate_token": torch.stack([duplicate_token_score(p, tokens, mask) for p in pat]),
        "induction": torch.stack([induction_score(p, tokens, mask) for p in pat]),
    }
