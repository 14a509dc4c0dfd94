"""Per-token input attribution for a metric of the logits.

The metric defaults to logit(answer) (− logit(wrong)) at the readout position; any function
``logits [batch, pos, vocab] -> [batch]`` works. Attributions are taken at the embedding node
``input`` (token + learned position embedding), one score per token [batch, pos]:

- ``gradient``: the L2 norm of d metric / d embedding;
- ``grad_x_input``: gradient · embedding;
- ``integrated_gradients``: (x − x₀) · ∫ grad along the straight path from the baseline x₀
  (Sundararajan et al. 2017, midpoint rule); completeness: the scores sum to
  metric(x) − metric(x₀) up to the quadrature error;
- ``occlusion``: metric(x) − metric(x with token p replaced by the baseline);
- ``rollout``: attention rollout (Abnar & Zuidema 2020) from the readout position;
- ``shap``: Shapley values by permutation sampling, absent tokens set to the baseline.

The baseline is a token id whose embedding (at the same positions) stands in for every token:
by default the tokenizer's pad (else end-of-text) token, else id 0. ``"zero"`` (the zero vector)
is allowed but poor for pre-norm models: every norm is singular at zero, so the path integral
of integrated gradients converges slowly there.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

import torch
from torch import Tensor

from circuitfind.errors import InputError
from circuitfind.inspect._common import (
    AnswerLike,
    TokensLike,
    as_tokens,
    readout_positions,
    token_ids,
)

if TYPE_CHECKING:
    from circuitfind.model import Model

__all__ = [
    "ATTRIBUTION_METHODS",
    "BASELINE_METHODS",
    "COMPLETE_METHODS",
    "attribute",
    "attribution_summary",
    "baseline_token",
    "embed_metric",
    "logit_metric",
]

Metric = Callable[[Tensor], Tensor]
ATTRIBUTION_METHODS = (
    "gradient",
    "grad_x_input",
    "integrated_gradients",
    "occlusion",
    "rollout",
    "shap",
)
BASELINE_METHODS = ("integrated_gradients", "occlusion", "shap")  # compare with a baseline
COMPLETE_METHODS = ("integrated_gradients", "shap")  # scores sum to f(input) - f(baseline)


def logit_metric(
    model: Model,
    tokens: Tensor,
    answer: AnswerLike,
    wrong: AnswerLike | None = None,
    *,
    position: int | Tensor | None = None,
    attention_mask: Tensor | None = None,
) -> Metric:
    """``logits -> [batch]``: logit(answer) (− logit(wrong)) at each row's readout position.

    Works on a batch tiled k times (variant-major), as the attribution methods run it.
    """
    batch = tokens.shape[0]
    pos = readout_positions(tokens, attention_mask, position)
    a = token_ids(model, answer, batch)
    w = token_ids(model, wrong, batch) if wrong is not None else None

    def metric(logits: Tensor) -> Tensor:
        k = logits.shape[0] // batch
        rows = torch.arange(logits.shape[0], device=logits.device)
        last = logits[rows, pos.repeat(k)].float()
        out = last.gather(-1, a.repeat(k)[:, None])[:, 0]
        if w is not None:
            out = out - last.gather(-1, w.repeat(k)[:, None])[:, 0]
        return out

    return metric


def embed_metric(
    model: Model, tokens: Tensor, attention_mask: Tensor | None, metric: Metric, embed: Tensor
) -> Tensor:
    """The metric with the embedding replaced by ``embed`` [k * batch, pos, d_model]: [k*batch]."""
    k = embed.shape[0] // tokens.shape[0]
    ids = tokens.repeat(k, 1)
    mask = attention_mask.repeat(k, 1) if attention_mask is not None else None
    return metric(model(ids, mask, hooks={"embed": lambda _x: embed}))


def _embedding(model: Model, tokens: Tensor, attention_mask: Tensor | None) -> Tensor:
    seen: list[Tensor] = []

    def capture(x: Tensor) -> Tensor:
        seen.append(x.detach())
        return x

    with torch.no_grad():
        model(tokens, attention_mask, hooks={"embed": capture})
    return seen[0]


def baseline_token(model: Model, baseline: str | int | None = None) -> str | int:
    """The baseline actually used: ``baseline`` if given, else the tokenizer's pad (else
    end-of-text) token id, else 0."""
    if baseline is not None:
        return baseline
    tok = model.tokenizer
    pad = (
        None
        if tok is None
        else (tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id)
    )
    return int(pad) if pad is not None and 0 <= int(pad) < model.cfg.d_vocab else 0


def _baseline(
    model: Model,
    tokens: Tensor,
    attention_mask: Tensor | None,
    baseline: str | int | None,
    x: Tensor,
) -> Tensor:
    baseline = baseline_token(model, baseline)
    if baseline == "zero":
        return torch.zeros_like(x)
    if isinstance(baseline, int):
        return _embedding(model, torch.full_like(tokens, baseline), attention_mask)
    raise InputError(f"baseline must be 'zero' or a token id; got {baseline!r}")


def _grad(
    model: Model, tokens: Tensor, mask: Tensor | None, metric: Metric, embed: Tensor
) -> Tensor:
    with torch.enable_grad():
        leaf = embed.detach().clone().requires_grad_(True)
        embed_metric(model, tokens, mask, metric, leaf).sum().backward()
    assert leaf.grad is not None
    return leaf.grad


def attribute(
    model: Model,
    tokens: TokensLike,
    answer: AnswerLike | None = None,
    wrong: AnswerLike | None = None,
    *,
    method: str = "integrated_gradients",
    metric: Metric | None = None,
    position: int | Tensor | None = None,
    attention_mask: Tensor | None = None,
    baseline: str | int | None = None,
    steps: int = 32,
    n_samples: int = 16,
    seed: int = 0,
) -> Tensor:
    """Per-token attribution scores [batch, pos] (zero at padding).

    Args:
        model: the model.
        tokens: token ids [batch, pos] (or text).
        answer, wrong: the default metric's tokens (see ``logit_metric``).
        method: one of ``ATTRIBUTION_METHODS``.
        metric: ``logits -> [batch]`` instead of the logit metric.
        position: readout position (default: each row's last real token).
        attention_mask: [batch, pos] for padded batches.
        baseline: a token id or ``"zero"`` (integrated gradients, occlusion, shap);
            default: the pad / end-of-text token, else 0.
        steps: integrated-gradients steps.
        n_samples: permutations for ``shap``.
        seed: for ``shap``'s permutations.
    """
    if method not in ATTRIBUTION_METHODS:
        raise InputError(
            f"unknown attribution method {method!r}; choose from {', '.join(ATTRIBUTION_METHODS)}"
        )
    ids, mask = as_tokens(model, tokens, attention_mask)
    real = (mask if mask is not None else torch.ones_like(ids)).to(torch.float32)
    if method == "rollout":
        return _rollout(model, ids, mask, position) * real
    if metric is None:
        if answer is None:
            raise InputError("give an answer token (or a metric) to attribute")
        metric = logit_metric(model, ids, answer, wrong, position=position, attention_mask=mask)
    x = _embedding(model, ids, mask)
    if method == "gradient":
        return _grad(model, ids, mask, metric, x).norm(dim=-1) * real
    if method == "grad_x_input":
        return (_grad(model, ids, mask, metric, x) * x).sum(-1) * real
    x0 = _baseline(model, ids, mask, baseline, x)
    if method == "integrated_gradients":
        return _integrated_gradients(model, ids, mask, metric, x, x0, steps) * real
    if method == "occlusion":
        return _occlusion(model, ids, mask, metric, x, x0) * real
    return _shap(model, ids, mask, metric, x, x0, n_samples, seed) * real


def _integrated_gradients(
    model: Model,
    ids: Tensor,
    mask: Tensor | None,
    metric: Metric,
    x: Tensor,
    x0: Tensor,
    steps: int,
    chunk: int = 8,
) -> Tensor:
    alphas = (torch.arange(steps, device=x.device, dtype=torch.float32) + 0.5) / steps
    total = torch.zeros_like(x, dtype=torch.float32)
    for part in alphas.split(chunk):
        path = torch.cat([x0 + a * (x - x0) for a in part])  # [k * batch, pos, d]
        g = _grad(model, ids, mask, metric, path).float()
        total += g.view(len(part), *x.shape).sum(0)
    return ((x - x0).float() * total / steps).sum(-1)


def _occlusion(
    model: Model, ids: Tensor, mask: Tensor | None, metric: Metric, x: Tensor, x0: Tensor
) -> Tensor:
    batch, seq = ids.shape
    with torch.no_grad():
        full = embed_metric(model, ids, mask, metric, x)
        variants = x.repeat(seq, 1, 1).view(seq, batch, seq, -1).clone()
        for p in range(seq):
            variants[p, :, p] = x0[:, p]
        occluded = embed_metric(model, ids, mask, metric, variants.view(seq * batch, seq, -1))
    return (full[None] - occluded.view(seq, batch)).T  # [batch, seq]


def _shap(
    model: Model,
    ids: Tensor,
    mask: Tensor | None,
    metric: Metric,
    x: Tensor,
    x0: Tensor,
    n_samples: int,
    seed: int,
) -> Tensor:
    batch, seq = ids.shape
    gen = torch.Generator().manual_seed(seed)
    out = torch.zeros(batch, seq)
    with torch.no_grad():
        for _ in range(n_samples):
            order = torch.randperm(seq, generator=gen)
            present = torch.zeros(seq + 1, seq, dtype=torch.bool)
            for i, p in enumerate(order.tolist()):
                present[i + 1 :, p] = True
            keep = present.to(x.device)[:, None, :, None]  # [seq + 1, 1, seq, 1]
            embeds = torch.where(keep, x[None], x0[None]).reshape((seq + 1) * batch, seq, -1)
            values = embed_metric(model, ids, mask, metric, embeds).view(seq + 1, batch).cpu()
            gains = values[1:] - values[:-1]  # [seq, batch]: adding order[i]
            out[:, order] += gains.T
    return (out / n_samples).to(x.device)


def _rollout(
    model: Model, ids: Tensor, mask: Tensor | None, position: int | Tensor | None
) -> Tensor:
    with torch.no_grad():
        _, cache = model.run_with_cache(ids, mask, patterns=True)
    seq = ids.shape[1]
    eye = torch.eye(seq, device=ids.device)
    rollout = eye.expand(ids.shape[0], seq, seq)
    for pattern in cache.patterns:
        a = 0.5 * pattern.float().mean(1) + 0.5 * eye
        a = a / a.sum(-1, keepdim=True)
        rollout = a @ rollout
    pos = readout_positions(ids, mask, position)
    return rollout[torch.arange(ids.shape[0], device=ids.device), pos]


def attribution_summary(
    model: Model,
    tokens: TokensLike,
    scores: Tensor,
    answer: AnswerLike | None = None,
    wrong: AnswerLike | None = None,
    *,
    method: str = "integrated_gradients",
    metric: Metric | None = None,
    position: int | Tensor | None = None,
    attention_mask: Tensor | None = None,
    baseline: str | int | None = None,
) -> list[dict[str, float | None]]:
    """What an attribution's scores should be read against, one dict a row:

    ``f_input`` (the metric on the input), ``f_baseline`` (on the baseline: every token's
    embedding replaced by the baseline's; None for methods without one), ``sum`` (of the row's
    scores), ``expected`` (``f_input - f_baseline`` where the method is complete, i.e. its
    scores should sum to it: integrated gradients up to quadrature error, shap exactly in
    expectation), ``gap`` (``sum - expected``) and ``baseline_norm`` (the baseline embedding's
    mean norm over positions: near zero, pre-norm models are singular and integrated gradients
    needs many steps)."""
    ids, mask = as_tokens(model, tokens, attention_mask)
    if metric is None:
        if answer is None:
            raise InputError("give an answer token (or a metric) to summarise attributions")
        metric = logit_metric(model, ids, answer, wrong, position=position, attention_mask=mask)
    x = _embedding(model, ids, mask)
    with torch.no_grad():
        f_input = embed_metric(model, ids, mask, metric, x).float().cpu()
        f_base = norm = None
        if method in BASELINE_METHODS:
            x0 = _baseline(model, ids, mask, baseline, x)
            f_base = embed_metric(model, ids, mask, metric, x0).float().cpu()
            norm = x0.float().norm(dim=-1).mean(-1).cpu()  # [batch]
    sums = scores.detach().float().sum(-1).cpu()
    rows: list[dict[str, float | None]] = []
    for i in range(ids.shape[0]):
        row: dict[str, float | None] = {
            "f_input": float(f_input[i]),
            "f_baseline": None if f_base is None else float(f_base[i]),
            "sum": float(sums[i]),
            "expected": None,
            "gap": None,
            "baseline_norm": None if norm is None else float(norm[i]),
        }
        if f_base is not None and method in COMPLETE_METHODS:
            expected = float(f_input[i] - f_base[i])
            row["expected"] = expected
            row["gap"] = float(sums[i]) - expected
        rows.append(row)
    return rows
