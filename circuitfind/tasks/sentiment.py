"""Sentiment (after the ToyMovieReview prompts of Tigges et al. 2023, "Linear representations
of sentiment in large language models").

Clean prompt: ``"I thought this movie was wonderful, I loved it. Conclusion: This movie is"``
-> a word of the review's sentiment (`` great``; `` terrible`` for a negative review). Wrong
answer: the opposite sentiment's word. Metric: logit difference, the review's sentiment word
minus the opposite one. Corrupted distribution: the same template with an adjective and verb
of the opposite sentiment (as many tokens), which flips the answer. Half the reviews are
positive. The answer words fall back from `` great``/`` terrible`` to `` good``/`` bad`` where
the first pair is not one token each.
"""

from __future__ import annotations

from typing import Any

from circuitfind.errors import InputError
from circuitfind.tasks.base import Task
from circuitfind.tasks.build import Row, build_task, draw_rows
from circuitfind.tasks.metrics import Metric
from circuitfind.tasks.tokenize import is_single_token, resolve_tokenizer

__all__ = ["NEGATIVE", "POSITIVE", "TEMPLATES", "sentiment"]

TEMPLATES: list[str] = [
    "I thought this movie was {adj}, I {verb} it. Conclusion: This movie is",
    "I thought this film was {adj}, I {verb} it. Conclusion: This film is",
]
POSITIVE = {
    "adj": ["perfect", "fantastic", "delightful", "good", "remarkable", "wonderful", "nice",
            "fabulous", "outstanding", "brilliant", "superb", "amazing", "excellent"],
    "verb": ["loved", "enjoyed", "adored", "liked"],
}  # fmt: skip
NEGATIVE = {
    "adj": ["awful", "bad", "dreadful", "horrible", "terrible", "miserable", "boring",
            "disappointing", "dull", "lousy", "poor", "mediocre", "tedious"],
    "verb": ["hated", "despised", "disliked", "loathed"],
}  # fmt: skip
_ANSWERS = [(" great", " terrible"), (" good", " bad")]


def sentiment(
    source: Any,
    *,
    n: int = 64,
    seed: int = 0,
    templates: list[str] | None = None,
    metric: str | Metric | None = None,
    add_bos: bool | None = None,
    allow_unk: bool = False,
) -> Task:
    """Sentiment prompt pairs, alternating positive and negative. Deterministic for a seed."""
    tok = resolve_tokenizer(source)
    if n < 1:
        raise InputError(f"n must be at least 1; got {n}")
    answers = next(
        (a for a in _ANSWERS if is_single_token(tok, a[0]) and is_single_token(tok, a[1])), None
    )
    if answers is None:
        raise InputError("neither ' great'/' terrible' nor ' good'/' bad' is one token each")
    templates = templates or TEMPLATES

    def make(rng: Any, i: int) -> Row:
        template = rng.choice(templates)
        pos = i % 2 == 0
        same, other = (POSITIVE, NEGATIVE) if pos else (NEGATIVE, POSITIVE)
        clean = template.format(adj=rng.choice(same["adj"]), verb=rng.choice(same["verb"]))
        corrupted = template.format(adj=rng.choice(other["adj"]), verb=rng.choice(other["verb"]))
        right, wrong = answers if pos else answers[::-1]
        return clean, corrupted, right, wrong

    return build_task(
        source,
        tok,
        draw_rows(make, n, seed, factor=8),
        n=n,
        name="sentiment",
        description="sentiment (Tigges et al. 2023 ToyMovieReview), opposite-sentiment corruption",
        metric=metric or "logit_diff",
        add_bos=add_bos,
        allow_unk=allow_unk,
        meta={"answers": list(answers)},
    )
