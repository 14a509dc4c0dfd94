"""What the explorer shows of a node that needs the model: its attention pattern over example
prompts, its direct logit attribution toward the answer and the wrong answer, and the prompts
themselves as tokens with the readout position marked.

Attention patterns are quantised to integers 0..100 (percent of the query's attention, rounded),
DLA values to four significant digits; every DLA comes as ``[mean, standard error]`` over the
prompts it was measured on (``n`` in the payload).
"""

from __future__ import annotations

import logging
import math
from typing import Any

import torch
from torch import Tensor

__all__ = ["attention_patterns", "direct_effects", "prompt_views", "sig"]

logger = logging.getLogger(__name__)


def sig(x: float, digits: int = 4) -> float | None:
    """``x`` rounded to ``digits`` significant digits; None for NaN and infinities."""
    x = float(x)
    if not math.isfinite(x):
        return None
    return float(f"{x:.{digits}g}")


def _first(x: Tensor) -> Tensor:
    return x if x.dim() == 1 else x[:, 0]


def _label(tokenizer: Any, token: int) -> str:
    if tokenizer is not None:
        try:
            return str(tokenizer.decode([int(token)]))
        except Exception:  # a tokenizer that cannot decode an id: show the id
            pass
    return f"#{int(token)}"


def _lengths(task: Any, n: int) -> list[int]:
    if task.attention_mask is None:
        return [int(task.clean.shape[1])] * n
    return [int(x) for x in task.attention_mask[:n].sum(-1)]


def prompt_views(model: Any, task: Any, n_prompts: int = 3) -> list[dict[str, Any]]:
    """The first ``n_prompts`` clean prompts: their tokens as text, the readout position the
    circuit reads (the metric is taken at its logits), the answer and wrong tokens."""
    tokenizer = getattr(model, "tokenizer", None)
    n = min(n_prompts, int(task.clean.shape[0]))
    out = []
    for i, length in enumerate(_lengths(task, n)):
        ids = task.clean[i, :length].tolist()
        view: dict[str, Any] = {
            "tokens": [_label(tokenizer, t) for t in ids],
            "readout": int(task.readout[i]),
            "answer": _label(tokenizer, int(_first(task.answer)[i])),
            "wrong": None,
        }
        if getattr(task, "wrong", None) is not None:
            view["wrong"] = _label(tokenizer, int(_first(task.wrong)[i]))
        out.append(view)
    return out


@torch.no_grad()
def attention_patterns(
    model: Any, task: Any, heads: list[str], n_prompts: int = 3
) -> dict[str, list[list[int]]]:
    """``{head: [pattern of prompt 0, ...]}``, each pattern the causal (lower) triangle of the
    ``[q, k]`` matrix of the prompt's real tokens in percent (integers 0..100), row by row:
    entry ``q * (q + 1) / 2 + k`` is the attention from position q to position k <= q."""
    if not heads:
        return {}
    n = min(n_prompts, int(task.clean.shape[0]))
    tokens = task.clean[:n].to(model.device)
    mask = None if task.attention_mask is None else task.attention_mask[:n].to(model.device)
    _, cache = model.run_with_cache(tokens, mask, patterns=True)
    lengths = _lengths(task, n)
    out: dict[str, list[list[int]]] = {}
    for name in heads:
        layer, head = (int(x) for x in name[1:].split(".h"))
        pattern = cache.patterns[layer][:, head].float().cpu()  # [batch, q, k]
        out[name] = []
        for i, t in enumerate(lengths):
            q, k = torch.tril_indices(t, t)
            cells = (pattern[i, q, k] * 100).round().clamp(0, 100).int()
            out[name].append(cells.tolist())
    return out


def _mean_se(x: Tensor) -> list[float | None]:
    x = x.double()
    n = x.numel()
    se = float(x.std(unbiased=True) / math.sqrt(n)) if n > 1 else float("nan")
    return [sig(float(x.mean())), sig(se, 3)]


@torch.no_grad()
def direct_effects(
    model: Any, task: Any, nodes: list[str], max_prompts: int = 32
) -> tuple[dict[str, dict[str, list[float | None]]], int]:
    """Each node's direct logit attribution at the readout (:func:`circuitfind.inspect.dla.dla`)
    toward the answer, toward the wrong answer (when the task has one) and their difference, as
    ``[mean, standard error]`` over the first ``max_prompts`` prompts; and that number of
    prompts. Empty where DLA does not add up (post-norms, soft-capped logits)."""
    from circuitfind.inspect.dla import additive_readout, dla

    if not nodes or not additive_readout(model):
        if nodes:
            family = model.cfg.family
            logger.warning("no DLA for %s: its logits are not a sum of node terms", family)
        return {}, 0
    n = min(max_prompts, int(task.clean.shape[0]))
    tokens = task.clean[:n]
    mask = None if task.attention_mask is None else task.attention_mask[:n]
    readout = task.readout[:n]
    answer = _first(task.answer)[:n]
    toward = {"answer": dla(model, tokens, answer, position=readout, attention_mask=mask)}
    if getattr(task, "wrong", None) is not None:
        wrong = _first(task.wrong)[:n]
        toward["wrong"] = dla(model, tokens, wrong, position=readout, attention_mask=mask)
    out: dict[str, dict[str, list[float | None]]] = {}
    for name in nodes:
        if name not in toward["answer"]:
            continue
        entry = {key: _mean_se(values[name].cpu()) for key, values in toward.items()}
        if "wrong" in toward:
            entry["diff"] = _mean_se((toward["answer"][name] - toward["wrong"][name]).cpu())
        out[name] = entry
    return out, n
