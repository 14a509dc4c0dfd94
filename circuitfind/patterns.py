"""Attention-pattern scores, the repeated-token probe and the head-role vocabulary: one
definition of each, used by the diagrams' roles (:mod:`circuitfind.roles`), ``circuitfind
attention`` (:mod:`circuitfind.inspect.attention`) and the zoo's diagnostics.

Scores take pattern tensors ``[batch, head, q, k]`` and return one value a head:

- previous-token: mean attention from q to q-1;
- duplicate-token: mean attention mass on earlier copies of the current token (over positions
  whose token occurred before);
- induction: mean attention mass on the tokens that followed earlier copies of the current
  token (``A B ... A`` -> ``B``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
from torch import Tensor

__all__ = [
    "DLA_FRACTION",
    "PAPER_DEPTHS",
    "ROLES",
    "ROLE_COLOURS",
    "THRESHOLDS",
    "duplicate_token_score",
    "far_from_paper",
    "induction_score",
    "induction_targets",
    "pick_role",
    "previous_token_score",
    "repeated_tokens",
]

ROLES = (
    "name-mover",
    "negative-name-mover",
    "s-inhibition",
    "induction",
    "duplicate-token",
    "previous-token",
    "copying",
    "unlabelled",
)
"""Every head role, in priority order: a head takes the first role whose score passes its
threshold (task roles, then induction, which also scores on its neighbours' patterns, then the
other pattern roles; copying, a weight property, last)."""

# Fill colours for diagrams and reports (colour-blind friendly, light enough for black text).
ROLE_COLOURS: dict[str, str] = {
    "name-mover": "#f4a582",
    "negative-name-mover": "#d6604d",
    "s-inhibition": "#92c5de",
    "induction": "#b2df8a",
    "duplicate-token": "#fdbf6f",
    "previous-token": "#cab2d6",
    "copying": "#ffff99",
    "unlabelled": "#f0f0f0",
}

# Minimum score for each attention role (mean attention probability on the diagnostic positions).
THRESHOLDS: dict[str, float] = {
    "previous-token": 0.4,
    "duplicate-token": 0.3,
    "induction": 0.3,
    "name-mover": 0.3,
    "s-inhibition": 0.3,
    "copying": 0.7,  # a share of positive OV eigenvalues, in [-1, 1]
}
# A name mover's |DLA| must be at least this fraction of the largest |DLA| among all heads.
DLA_FRACTION = 0.1

# Where each role's paper found it, as relative depth layer / (n_layers - 1) (0 = first layer,
# 1 = last). Wang et al. 2022 (IOI, GPT-2 small: name movers 9.6 9.9 10.0, negative name movers
# 10.7 11.10, S-inhibition 7.3 7.9 8.6 8.10, duplicate-token 0.1 0.10 3.0, previous-token 2.2
# 4.11); Olsson et al. 2022 (induction heads in every layer but the first, which has no earlier
# head to compose with).
PAPER_DEPTHS: dict[str, tuple[float, float, str]] = {
    "name-mover": (9 / 11, 10 / 11, "Wang et al. 2022 (IOI) found them in layers 9-10 of 12"),
    "negative-name-mover": (
        10 / 11,
        1.0,
        "Wang et al. 2022 (IOI) found them in layers 10-11 of 12",
    ),
    "s-inhibition": (7 / 11, 8 / 11, "Wang et al. 2022 (IOI) found them in layers 7-8 of 12"),
    "induction": (0.0, 1.0, "Olsson et al. 2022 find them in any layer but the first"),
    "duplicate-token": (0.0, 3 / 11, "Wang et al. 2022 (IOI) found them in layers 0-3 of 12"),
    "previous-token": (2 / 11, 4 / 11, "Wang et al. 2022 (IOI) found them in layers 2-4 of 12"),
}
# A role is far from its paper's layers when its relative depth is more than this from the
# paper's range (2.75 layers of GPT-2 small's 12; in a 2-layer model, layer 0 for S-inhibition).
FAR_SHARE = 0.25


def _masked_mean(values: Tensor, where: Tensor) -> Tensor:
    """Mean of values [batch, head, q] over positions where[batch, q]; NaN if none. -> [head]"""
    w = where[:, None, :].to(values.dtype)
    count = w.sum(dim=(0, 2))
    total = (values * w).sum(dim=(0, 2))
    return torch.where(count > 0, total / count.clamp_min(1), torch.full_like(total, float("nan")))


def _real(mask: Tensor | None, tokens: Tensor) -> Tensor:
    return torch.ones_like(tokens, dtype=torch.bool) if mask is None else mask.bool()


def previous_token_score(pattern: Tensor, attention_mask: Tensor | None = None) -> Tensor:
    """Mean attention from q to q-1 over real positions q >= 1. pattern [batch, head, q, k] ->
    [head]."""
    b, _, t, _ = pattern.shape
    real = _real(attention_mask, torch.zeros(b, t, dtype=torch.long, device=pattern.device))
    prev = pattern.diagonal(offset=-1, dim1=2, dim2=3)  # [batch, head, t-1]: q=1.. -> k=q-1
    where = real[:, 1:] & real[:, :-1]
    return _masked_mean(prev.float(), where)


def _same_token(tokens: Tensor, real: Tensor) -> Tensor:
    """[batch, q, k] True where k < q and tokens[k] == tokens[q] (both real)."""
    t = tokens.shape[1]
    same = tokens[:, :, None] == tokens[:, None, :]
    earlier = torch.ones(t, t, dtype=torch.bool, device=tokens.device).tril(-1)
    return same & earlier & real[:, :, None] & real[:, None, :]


def duplicate_token_score(
    pattern: Tensor, tokens: Tensor, attention_mask: Tensor | None = None
) -> Tensor:
    """Mean attention mass on earlier copies of the current token. -> [head] (NaN: no repeats)."""
    real = _real(attention_mask, tokens)
    same = _same_token(tokens, real)  # [batch, q, k]
    mass = (pattern.float() * same[:, None].float()).sum(-1)  # [batch, head, q]
    return _masked_mean(mass, same.any(-1))


def induction_targets(tokens: Tensor, attention_mask: Tensor | None = None) -> Tensor:
    """[batch, q, k] True where k-1 is an earlier occurrence of token q and k < q."""
    real = _real(attention_mask, tokens)
    same = _same_token(tokens, real)
    target = torch.zeros_like(same)
    target[:, :, 1:] = same[:, :, :-1]
    t = tokens.shape[1]
    strictly_earlier = torch.ones(t, t, dtype=torch.bool, device=tokens.device).tril(-1)
    return target & strictly_earlier & real[:, None, :]


def induction_score(
    pattern: Tensor, tokens: Tensor, attention_mask: Tensor | None = None
) -> Tensor:
    """Mean attention mass on the tokens after earlier copies of the current token. -> [head]."""
    target = induction_targets(tokens, attention_mask)
    mass = (pattern.float() * target[:, None].float()).sum(-1)
    return _masked_mean(mass, target.any(-1))


def pick_role(
    scores: Mapping[str, float], thresholds: Mapping[str, float] | None = None
) -> tuple[str, float]:
    """(role, score): the first role of :data:`ROLES` whose score (NaN = not measured) passes
    its threshold, or ("unlabelled", 0.0)."""
    limits = {**THRESHOLDS, **(thresholds or {})}
    for role in ROLES[:-1]:
        value = scores.get(role)
        if value is None or value != value:
            continue
        if value >= limits.get(role, 0.0):
            return role, float(value)
    return "unlabelled", 0.0


def repeated_tokens(
    candidates: Sequence[int], *, n: int, length: int, seed: int, prefix: Sequence[int] = ()
) -> Tensor:
    """The repeated-token probe: ``[n, len(prefix) + 2 * length]``, each row the prefix, a
    segment of distinct tokens drawn from ``candidates`` (with repeats only when there are
    fewer candidates than ``length``), then the segment again."""
    gen = torch.Generator().manual_seed(seed)
    cand = torch.as_tensor(list(candidates), dtype=torch.long)
    rows = []
    for _ in range(n):
        if len(cand) >= length:
            seg = cand[torch.randperm(len(cand), generator=gen)[:length]]
        else:
            seg = cand[torch.randint(0, len(cand), (length,), generator=gen)]
        rows.append(torch.cat([torch.as_tensor(list(prefix), dtype=torch.long), seg, seg]))
    return torch.stack(rows)


def far_from_paper(role: str, layer: int, n_layers: int) -> bool:
    """Whether a head of ``role`` in ``layer`` lies far from where the role's paper found it:
    its relative depth ``layer / (n_layers - 1)`` is more than :data:`FAR_SHARE` outside
    :data:`PAPER_DEPTHS`, or it is an induction head in the first layer. Roles no paper places
    (``copying``, ``unlabelled``) are never far."""
    if role not in PAPER_DEPTHS:
        return False
    if role == "induction":
        return layer == 0
    lo, hi, _ = PAPER_DEPTHS[role]
    depth = layer / (n_layers - 1) if n_layers > 1 else 0.0
    return max(lo - depth, depth - hi, 0.0) > FAR_SHARE
