"""Attention patterns and per-head role scores.

Scores, each a ``[n_layers, n_heads]`` tensor (``head_pattern_scores``; the pattern scores'
definitions are :mod:`circuitfind.patterns`', the ones the diagrams' roles use):

- ``previous-token``: mean attention from each position to the one before it;
- ``duplicate-token``: mean attention from a token to earlier occurrences of the same token;
- ``induction``: mean attention from a token to the tokens that *followed* its earlier
  occurrences (the induction stripe);
- ``copying``: the positive-eigenvalue share ``Σλ / Σ|λ|`` of the head's OV circuit through
  the embedding and unembedding, ``W_E W_V W_O W_U`` (Elhage et al. 2021), with the norms'
  weights folded in and their centering/scale ignored; 1 means the head copies the token it
  attends to into the logits.

The first three are measured on repeated random tokens (a random sequence followed by itself)
unless tokens are given; duplicate-token and induction scores average over query positions
that have such an earlier occurrence. ``head_roles`` names each head with the role vocabulary,
thresholds and priority of :mod:`circuitfind.patterns` (the same as circuit diagrams).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

from circuitfind.inspect._common import TokensLike, as_tokens
from circuitfind.patterns import (
    duplicate_token_score,
    induction_score,
    pick_role,
    previous_token_score,
    repeated_tokens,
)

if TYPE_CHECKING:
    from circuitfind.model import Model

__all__ = [
    "SCORES",
    "attention_patterns",
    "copying_scores",
    "head_pattern_scores",
    "head_roles",
    "pattern_scores",
    "repeated_random_tokens",
]

SCORES = ("previous-token", "duplicate-token", "induction", "copying")
"""The scores ``head_pattern_scores`` measures (each also a role of :data:`patterns.ROLES`)."""


def attention_patterns(
    model: Model, tokens: TokensLike, attention_mask: Tensor | None = None
) -> Tensor:
    """Attention probabilities of every head: [n_layers, batch, head, query, key]."""
    ids, mask = as_tokens(model, tokens, attention_mask)
    with torch.no_grad():
        _, cache = model.run_with_cache(ids, mask, patterns=True)
    return torch.stack(cache.patterns)


def repeated_random_tokens(
    model: Model, *, n: int = 16, seq_len: int = 20, seed: int = 0
) -> Tensor:
    """The repeated-token probe: ``n`` rows of BOS (where the model takes one), ``seq_len``
    random ordinary tokens, then the same tokens again: [n, len(bos) + 2 * seq_len].

    Tokens within one half are distinct where the vocabulary allows, so every repeat is planted;
    special, control and byte-fallback tokens are never drawn
    (:func:`circuitfind.tasks.tokens.ordinary_token_ids`).
    """
    from circuitfind.tasks.tokens import bos_prefix, ordinary_token_ids

    prefix = bos_prefix(model)
    if model.cfg.n_ctx:
        seq_len = min(seq_len, (model.cfg.n_ctx - len(prefix)) // 2)
    tokens = repeated_tokens(
        ordinary_token_ids(model), n=n, length=seq_len, seed=seed, prefix=prefix
    )
    return tokens.to(model.device)


def pattern_scores(
    patterns: Tensor, tokens: Tensor, attention_mask: Tensor | None = None
) -> dict[str, Tensor]:
    """Previous-token, duplicate-token and induction scores from patterns.

    Args:
        patterns: [n_layers, batch, head, query, key].
        tokens: [batch, pos] the tokens the patterns were computed on.
        attention_mask: [batch, pos] (padding positions are ignored).

    Returns:
        ``{"previous-token", "duplicate-token", "induction"}``, each [n_layers, n_heads].
    """

    def per_layer(fn: Any, *args: Any) -> Tensor:
        return torch.stack([fn(p, *args) for p in patterns]).nan_to_num(0.0)

    return {
        "previous-token": per_layer(previous_token_score, attention_mask),
        "duplicate-token": per_layer(duplicate_token_score, tokens, attention_mask),
        "induction": per_layer(induction_score, tokens, attention_mask),
    }


def copying_scores(model: Model) -> Tensor:
    """Positive-eigenvalue share of each head's OV circuit through W_E and W_U: [layers, heads].

    Uses the non-zero eigenvalues of ``W_E W_V W_O W_U`` ([vocab, vocab], rank d_head), which
    equal those of ``W_O W_U W_E W_V`` ([d_head, d_head]).
    """
    cfg, w = model.cfg, model.w
    with torch.no_grad():
        unembed = (
            model.norm_scale(w.lnf_w)[:, None] * w.W_U.float()
        ) @ w.W_E.float()  # [d_model, d_model]
        out = torch.zeros(cfg.n_layers, cfg.n_heads)
        for layer, lw in enumerate(w.layers):
            for h in range(cfg.n_heads):
                w_v = model.norm_scale(lw.ln1_w)[:, None] * lw.W_V[h // cfg.group_size].float()
                small = lw.W_O[h].float() @ unembed @ w_v  # [d_head, d_head]
                eig = torch.linalg.eigvals(small.double())
                total = eig.abs().sum()
                out[layer, h] = float(eig.real.sum() / total) if total > 0 else 0.0
    return out


def head_pattern_scores(
    model: Model,
    tokens: TokensLike | None = None,
    *,
    attention_mask: Tensor | None = None,
    n: int = 16,
    seq_len: int = 20,
    seed: int = 0,
) -> dict[str, Tensor]:
    """Role scores of every head: ``{score: Tensor [n_layers, n_heads]}`` for every score in
    :data:`SCORES`.

    Args:
        model: the model.
        tokens: tokens to measure the pattern scores on; default: ``n`` repeated random
            sequences of ``seq_len`` tokens (``repeated_random_tokens``, seeded by ``seed``).
        attention_mask: [batch, pos] for padded batches.
    """
    if tokens is None:
        ids, mask = repeated_random_tokens(model, n=n, seq_len=seq_len, seed=seed), None
    else:
        ids, mask = as_tokens(model, tokens, attention_mask)
    scores = pattern_scores(attention_patterns(model, ids, mask), ids, mask)
    scores["copying"] = copying_scores(model)
    return {k: v.cpu() for k, v in scores.items()}


def head_roles(
    scores: dict[str, Tensor],
    *,
    thresholds: dict[str, float] | None = None,
) -> dict[str, str]:
    """The role of each head whose score passes its threshold: ``{"a1.h2": "induction"}``.

    Vocabulary, thresholds and priority are :mod:`circuitfind.patterns`' (``pick_role``): the
    diagrams name a head the same way from the same scores.
    """
    roles: dict[str, str] = {}
    n_layers, n_heads = next(iter(scores.values())).shape
    for layer in range(n_layers):
        for h in range(n_heads):
            role, _ = pick_role({k: float(v[layer, h]) for k, v in scores.items()}, thresholds)
            if role != "unlabelled":
                roles[f"a{layer}.h{h}"] = role
    return roles
