"""Greater-than (Hanna et al. 2023): "The war lasted from the year 1732 to the year 17" -> a
two-digit year above 32.

The answer set is the two-digit tokens above YY, the wrong set those at or below it; the metric
is the probability mass on the answer set minus the mass on the wrong set. The corrupted prompt
has YY = 01 ("from the year 1701"), which leaves every later year possible. Only the years whose
prompt tokenizes as ``... 17`` + ``YY`` (two-digit token) are used.
"""

from __future__ import annotations

import random
from typing import Any

from circuitfind.errors import InputError
from circuitfind.tasks.base import Task
from circuitfind.tasks.metrics import Metric
from circuitfind.tasks.tokenize import encode, resolve_tokenizer, show

__all__ = ["NOUNS", "TEMPLATES", "greater_than", "year_tokens"]

TEMPLATES: list[str] = [
    "The {noun} lasted from the year {century}{yy} to the year {century}",
    "The {noun} started in the year {century}{yy} and ended in the year {century}",
    "The {noun} ran from the year {century}{yy} to the year {century}",
]

NOUNS: list[str] = [
    "war", "abduction", "accord", "affair", "agreement", "attack", "campaign", "captivity",
    "case", "challenge", "clash", "collaboration", "competition", "conflict", "conspiracy",
    "construction", "contract", "cooperation", "crisis", "deal", "decline", "development",
    "dispute", "dynasty", "effort", "empire", "epidemic", "exchange", "expansion", "expedition",
    "famine", "friendship", "growth", "invasion", "journey", "kingdom", "marriage",
    "negotiation", "occupation", "operation", "outbreak", "partnership", "period", "project",
    "reign", "relationship", "research", "revolution", "rule", "settlement", "siege", "strike",
    "struggle", "trade", "transition", "treaty", "trial", "truce", "voyage", "alliance",
]  # fmt: skip


def year_tokens(tok: Any) -> list[int]:
    """Token ids of "00".."99"; an error naming the first two-digit string that is not one token."""
    ids = []
    unk = getattr(tok, "unk_token_id", None)
    for y in range(100):
        t = encode(tok, f"{y:02d}", special=False)
        if len(t) != 1 or (unk is not None and t[0] == unk):
            raise InputError(
                f"greater-than needs every two-digit year to be one token; '{y:02d}' is "
                f"{show(tok, t)} for this tokenizer"
            )
        ids.append(t[0])
    return ids


def greater_than(
    source: Any,
    *,
    n: int = 64,
    seed: int = 0,
    century: int = 17,
    templates: list[str] | None = None,
    nouns: list[str] | None = None,
    metric: str | Metric | None = None,
) -> Task:
    """Greater-than prompt pairs for ``source``'s tokenizer; YY drawn from the valid years in
    02..98. Deterministic for a seed."""
    tok = resolve_tokenizer(source)
    if n < 1:
        raise InputError(f"n must be at least 1; got {n}")
    years = year_tokens(tok)
    templates = templates or TEMPLATES
    unk = getattr(tok, "unk_token_id", None)
    pool = [
        w for w in (nouns or NOUNS) if unk is None or unk not in encode(tok, " " + w, special=False)
    ]
    if not pool:
        raise InputError("the tokenizer knows none of the nouns; pass nouns=[...]")

    def text(template: str, noun: str, yy: int) -> str:
        return template.format(noun=noun, century=century, yy=f"{yy:02d}")

    # Keep the years whose prompt splits as "...17" + "YY", as long as the corrupted one.
    probe = templates[0]
    corrupt_ids = encode(tok, text(probe, pool[0], 1))
    valid = []
    for yy in range(2, 99):
        ids = encode(tok, text(probe, pool[0], yy))
        if len(ids) == len(corrupt_ids) and years[yy] in ids:
            valid.append(yy)
    if not valid:
        sample = text(probe, pool[0], 32)
        raise InputError(
            f"no year 02..98 splits into {century} + YY for this tokenizer: "
            f"{sample!r} -> {show(tok, encode(tok, sample))}, "
            f"{text(probe, pool[0], 1)!r} -> {show(tok, corrupt_ids)}"
        )
    rng = random.Random(seed)
    clean, corrupted, answer, wrong = [], [], [], []
    for _ in range(n):
        template, noun, yy = rng.choice(templates), rng.choice(pool), rng.choice(valid)
        c, x = text(template, noun, yy), text(template, noun, 1)
        ids = encode(tok, c)
        if unk is not None and unk in ids:
            raise InputError(
                f"the tokenizer does not know a word of {c!r}: {show(tok, ids)}; "
                "pass templates=[...] in words it knows"
            )
        clean.append(c)
        corrupted.append(x)
        answer.append([f"{y:02d}" for y in range(yy + 1, 100)])
        wrong.append([f"{y:02d}" for y in range(0, yy + 1)])
    task = Task.from_texts(
        tok,
        clean,
        corrupted,
        answer,
        wrong,
        metric=metric or "prob_diff",
        name="greater-than",
        description=f"greater-than (Hanna et al. 2023), century {century}, corrupted YY=01",
    )
    return task
