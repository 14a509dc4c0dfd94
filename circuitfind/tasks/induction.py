"""Induction: a random token sequence, then its repeat; predict the next token of the repeat.

Clean: ``[prefix] A_1 ... A_L A_1 ... A_{L-1}`` -> ``A_L``. Corrupted: ``[prefix] B_1 ... B_L
A_1 ... A_{L-1}`` with fresh tokens B (none of them in A): the second half and the final query
are the same, but nothing repeats and the answer appears nowhere. What differs between the two
runs is exactly the earlier occurrence that induction reads: the previous-token information at
the attended keys (K-composition) and the copied token (the induction head's value), so
resample ablation exposes the whole mechanism. (Sharing the first half instead, and corrupting
the second, would leave the keys the same in both runs and hide the K-composition edges.)
The tokens of A are distinct, drawn from the ordinary tokens of the model's vocabulary
(:func:`circuitfind.tasks.tokens.ordinary_token_ids`: never a special or byte-fallback token),
with or without a tokenizer; ``prefix`` is ``[BOS]`` where the model's family is trained with
one (Llama, Mistral, Gemma) and nothing otherwise (GPT-2, Pythia, Qwen), by
:func:`circuitfind.tasks.tokens.bos_prefix` (``add_bos`` overrides). Metric: log-probability of
the answer (there is no natural wrong answer).
"""

from __future__ import annotations

import random
from dataclasses import replace
from typing import Any

from circuitfind.errors import InputError
from circuitfind.tasks.base import Task
from circuitfind.tasks.metrics import Metric
from circuitfind.tasks.spans import induction_spans
from circuitfind.tasks.tokenize import resolve_tokenizer
from circuitfind.tasks.tokens import bos_prefix, ordinary_token_ids

__all__ = ["induction"]


def induction(
    source: Any,
    *,
    n: int = 64,
    seed: int = 0,
    length: int = 10,
    metric: str | Metric | None = None,
    add_bos: bool | None = None,
) -> Task:
    """Induction prompt pairs; ``source`` is a model (with ``.tokenizer`` or ``.cfg.d_vocab``)
    or a tokenizer. ``length`` is L, the length of the repeated segment."""
    if n < 1:
        raise InputError(f"n must be at least 1; got {n}")
    if length < 2:
        raise InputError(f"length must be at least 2; got {length}")
    tok = resolve_tokenizer(source, required=False)
    candidates = ordinary_token_ids(source)
    prefix = bos_prefix(source, add_bos=add_bos)
    if len(candidates) < 2 * length:
        raise InputError(
            f"the vocabulary has {len(candidates)} usable tokens; induction with length={length} "
            f"needs at least {2 * length}"
        )
    rng = random.Random(seed)
    clean, corrupted, answer = [], [], []
    for _ in range(n):
        tokens = rng.sample(candidates, 2 * length)
        a, b = tokens[:length], tokens[length:]
        clean.append(prefix + a + a[:-1])
        corrupted.append(prefix + b + a[:-1])
        answer.append(a[-1])
    task = Task.from_tokens(
        clean,
        corrupted,
        answer,
        metric=metric or "logprob",
        name="induction",
        description=f"repeated random tokens (segment length {length}); predict the repeat",
    )
    task.meta.update(bos=bool(prefix), vocabulary=len(candidates))
    task = task.with_spans(**induction_spans(n, len(prefix), length))
    if tok is None:
        return task
    prompts = [(tok.decode(c), tok.decode(x)) for c, x in zip(clean, corrupted)]
    return replace(task, prompts=prompts)
