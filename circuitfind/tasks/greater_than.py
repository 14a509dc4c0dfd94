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
from circuitfind.tasks.spans import greater_than_spans
from circuitfind.tasks.tokenize import encode, resolve_tokenizer, show
from circuitfind.tasks.tokens import bos_prefix

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
                f"{show(tok, t)} for this tokenizer (Hanna et al.'s task is built on GPT-2's "
                "two-digit year tokens; tokenizers that split digits one by one cannot pose it)"
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
    add_bos: bool | None = None,
    allow_unk: bool = False,
) -> Task:
    """Greater-than prompt pairs for ``source``'s tokenizer; YY drawn from the valid years in
    02..98. BOS first by :func:`circuitfind.tasks.tokens.bos_prefix` (``add_bos`` overrides).
    Deterministic for a seed.

    Needs a tokenizer that writes "1732" as "17" + "32" (GPT-2's BPE): tokenizers that split
    digits one by one (Gemma, Qwen, Llama-2) or in threes (Llama-3: "173" + "2") are refused
    with a message, because the task's answer, the next two-digit year token, does not exist
    for them (a one-digit variant would be a different task than Hanna et al.'s).
    """
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
        if len(ids) != len(corrupt_ids):
            continue
        diff = [p for p, (a, b) in enumerate(zip(ids, corrupt_ids)) if a != b]
        # the year's two digits are one token, the only one that differs from "...1701..."
        if len(diff) == 1 and ids[diff[0]] == years[yy] and corrupt_ids[diff[0]] == years[1]:
            valid.append(yy)
    if not valid:
        sample = text(probe, pool[0], 32)
        raise InputError(
            f"no year 02..98 splits into {century} + YY for this tokenizer: "
            f"{sample!r} -> {show(tok, encode(tok, sample))}, "
            f"{text(probe, pool[0], 1)!r} -> {show(tok, corrupt_ids)} (Hanna et al.'s task "
            "needs the year written as century + a two-digit token, as GPT-2 does; this "
            "tokenizer groups digits otherwise)"
        )
    rng = random.Random(seed)
    clean, corrupted, answer, wrong, noun_ids = [], [], [], [], []
    for _ in range(n):
        template, noun, yy = rng.choice(templates), rng.choice(pool), rng.choice(valid)
        noun_ids.append(encode(tok, " " + noun, special=False))
        c, x = text(template, noun, yy), text(template, noun, 1)
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
        prefix=bos_prefix(source, tok, add_bos=add_bos),
        allow_unk=allow_unk,
    )
    spans = greater_than_spans(task.clean, task.corrupted, task.readout, noun_ids)
    return task.with_spans(**spans)
