"""Attention patterns and per-head role scores.

Scores, each a ``[n_layers, n_heads]`` tensor (``head_scores``):

- ``previous_token``: mean attention from each position to the one before it;
- ``duplicate_token``: mean attention from a token to earlier occurrences of the same token;
- ``induction``: mean attention from a token to the tokens that *followed* its earlier
  occurrences (the induction stripe);
- ``copying``: the positive-eigenvalue share ``Σλ / Σ|λ|`` of the head's OV circuit through
  the embedding and unembedding, ``W_E W_V W_O W_U`` (Elhage et al. 2021), with the norms'
  weights folded in and their centering/scale ignored; 1 means the head copies the token it
  attends to into the logits.

The first three are measured on repeated random tokens (a random sequence followed by itself)
unless tokens are given; duplicate-token and induction scores average over query positions
that have such an earlier occurrence. The same scores give the head roles drawn in circuit
diagrams (``head_roles``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

from circuitfind.inspect._common import TokensLike, as_tokens

if TYPE_CHECKING:
    from circuitfind.model import Model

__all__ = [
    "ROLES",
    "attention_patterns",
    "copying_scores",
    "head_roles",
    "head_scores",
    "pattern_scores",
    "repeated_random_tokens",
]

ROLES = ("previous_token", "duplicate_token", "induction", "copying")


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
    """``n`` random sequences of ``seq_len`` tokens each followed by itself: [n, 2 * seq_len].

    Tokens within one half are distinct where the vocabulary allows, so every repeat is planted;
    the tokenizer's special tokens are never drawn.
    """
    gen = torch.Generator().manual_seed(seed)
    special = set(getattr(model.tokenizer, "all_special_ids", None) or [])
    usable = torch.tensor([t for t in range(model.cfg.d_vocab) if t not in special])
    if model.cfg.positional == "learned" and model.cfg.n_ctx:
        seq_len = min(seq_len, model.cfg.n_ctx // 2)
    if len(usable) >= seq_len:
        picks = [torch.randperm(len(usable), generator=gen)[:seq_len] for _ in range(n)]
        half = usable[torch.stack(picks)]
    else:
        half = usable[torch.randint(0, len(usable), (n, seq_len), generator=gen)]
    return torch.cat([half, half], dim=1).to(model.device)


def pattern_scores(
    patterns: Tensor, tokens: Tensor, attention_mask: Tensor | None = None
) -> dict[str, Tensor]:
    """Previous-token, duplicate-token and induction scores from patterns.

    Args:
        patterns: [n_layers, batch, head, query, key].
        tokens: [batch, pos] the tokens the patterns were computed on.
        attention_mask: [batch, pos] (padding positions are ignored).

    Returns:
        ``{"previous_token", "duplicate_token", "induction"}``, each [n_layers, n_heads].
    """
    # One definition of each score, shared with the head roles of circuit diagrams.
    from circuitfind.roles import duplicate_token_score, induction_score, previous_token_score

    def per_layer(fn: Any, *args: Any) -> Tensor:
        return torch.stack([fn(p, *args) for p in patterns]).nan_to_num(0.0)

    return {
        "previous_token": per_layer(previous_token_score, attention_mask),
        "duplicate_token": per_layer(duplicate_token_score, tokens, attention_mask),
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


def head_scores(
    model: Model,
    tokens: TokensLike | None = None,
    *,
    attention_mask: Tensor | None = None,
    n: int = 16,
    seq_len: int = 20,
    seed: int = 0,
) -> dict[str, Tensor]:
    """Role scores of every head: ``{role: Tensor [n_layers, n_heads]}`` for every role in ROLES.

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

    Induction wins when it passes its threshold (an induction head on repeated tokens also
    scores on its neighbours, not vice versa); otherwise the pattern role (previous-token,
    duplicate-token) that passes by the largest margin; copying only when no pattern role
    passes. Defaults: 0.4 for the pattern roles, 0.7 for copying (a share in [-1, 1]).
    """
    limits = {"previous_token": 0.4, "duplicate_token": 0.4, "induction": 0.4, "copying": 0.7}
    limits.update(thresholds or {})
    roles: dict[str, str] = {}
    n_layers, n_heads = next(iter(scores.values())).shape
    for layer in range(n_layers):
        for h in range(n_heads):
            margins = {
                role: float(scores[role][layer, h]) - limits[role]
                for role in ROLES
                if role in scores and float(scores[role][layer, h]) > limits[role]
            }
            pattern = {r: m for r, m in margins.items() if r != "copying"}
            if "induction" in pattern:
                roles[f"a{layer}.h{h}"] = "induction"
            elif pattern:
                roles[f"a{layer}.h{h}"] = max(pattern, key=lambda r: pattern[r])
            elif margins:
                roles[f"a{layer}.h{h}"] = "copying"
    return roles
