"""Induction: a random token sequence, then its repeat; predict the next token of the repeat.

Clean: ``[prefix] A_1 ... A_L A_1 ... A_{L-1}`` -> ``A_L``. Corrupted: ``[prefix] B_1 ... B_L
A_1 ... A_{L-1}`` with fresh tokens B (none of them in A): the second half and the final query
are the same, but nothing repeats and the answer appears nowhere. What differs between the two
runs is exactly the earlier occurrence that induction reads: the previous-token information at
the attended keys (K-composition) and the copied token (the induction head's value), so
resample ablation exposes the whole mechanism. (Sharing the first half instead, and corrupting
the second, would leave the keys the same in both runs and hide the K-composition edges.)
The tokens of A are distinct, drawn from the model's vocabulary without special tokens;
``prefix`` is what the tokenizer puts before any text (a BOS for Llama-style tokenizers,
nothing for GPT-2). Metric: log-probability of the answer (there is no natural wrong answer).
"""

from __future__ import annotations

import random
from dataclasses import replace
from typing import Any

from circuitfind.errors import InputError
from circuitfind.tasks.base import Task
from circuitfind.tasks.metrics import Metric
from circuitfind.tasks.tokenize import encode, resolve_tokenizer, special_ids, vocab_size

__all__ = ["induction"]


def induction(
    source: Any,
    *,
    n: int = 64,
    seed: int = 0,
    length: int = 10,
    metric: str | Metric | None = None,
) -> Task:
    """Induction prompt pairs; ``source`` is a model (with ``.tokenizer`` or ``.cfg.d_vocab``)
    or a tokenizer. ``length`` is L, the length of the repeated segment."""
    if n < 1:
        raise InputError(f"n must be at least 1; got {n}")
    if length < 2:
        raise InputError(f"length must be at least 2; got {length}")
    tok = resolve_tokenizer(source, required=False)
    if tok is not None:
        candidates = sorted(set(range(vocab_size(tok))) - special_ids(tok))
        prefix = encode(tok, "", special=True)
    else:
        cfg = getattr(source, "cfg", None)
        d_vocab = getattr(cfg, "d_vocab", None)
        if d_vocab is None:
            raise InputError("induction needs a tokenizer or a model whose cfg has d_vocab")
        candidates, prefix = list(range(int(d_vocab))), []
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
    if tok is None:
        return task
    prompts = [(tok.decode(c), tok.decode(x)) for c, x in zip(clean, corrupted)]
    return replace(task, prompts=prompts)
