"""Shared construction for the task suite: single-token word pools and length-matched pairs."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

from circuitfind.errors import InputError
from circuitfind.tasks.base import Task
from circuitfind.tasks.metrics import Metric
from circuitfind.tasks.tokenize import encode, is_single_token
from circuitfind.tasks.tokens import bos_prefix

__all__ = ["Row", "build_task", "draw_rows", "single_token_words"]

logger = logging.getLogger(__name__)

Row = tuple[str, str, str | list[str], str | list[str] | None]
"""(clean text, corrupted text, answer, wrong): one prompt pair."""


def single_token_words(
    tok: Any, words: Sequence[str], *, space: bool = True, what: str = "words", need: int = 2
) -> tuple[list[str], list[str]]:
    """(kept, dropped): the words that are one known token (after a space if ``space``).

    Raises:
        InputError: fewer than ``need`` words are kept; the message lists what was dropped.
    """
    prefix = " " if space else ""
    kept = [w for w in words if is_single_token(tok, prefix + w)]
    dropped = [w for w in words if w not in kept]
    if dropped:
        logger.info(
            "%d of %d %s are not one token and are not used: %s",
            len(dropped),
            len(words),
            what,
            ", ".join(dropped),
        )
    if len(kept) < need:
        raise InputError(
            f"this tokenizer keeps only {len(kept)} of the {what} whole (needs {need}); "
            f"dropped: {', '.join(dropped[:12])}; pass your own list of single-token {what}"
        )
    return kept, dropped


def build_task(
    source: Any,
    tok: Any,
    rows: list[Row],
    *,
    n: int,
    name: str,
    description: str,
    metric: str | Metric,
    add_bos: bool | None = None,
    allow_unk: bool = False,
    first_token: bool = False,
    meta: dict[str, Any] | None = None,
) -> Task:
    """The first ``n`` rows whose clean and corrupted prompts tokenize to one length.

    Rows of unequal lengths (a filler that merges with its neighbours differently) are skipped
    and counted in ``meta["skipped_pairs"]``; fewer than ``n`` usable rows is an error.
    """
    keep: list[Row] = []
    skipped = 0
    for row in rows:
        if len(keep) == n:
            break
        if len(encode(tok, row[0], special=False)) == len(encode(tok, row[1], special=False)):
            keep.append(row)
        else:
            skipped += 1
    if len(keep) < n:
        raise InputError(
            f"{name}: only {len(keep)} of {len(rows)} generated pairs tokenize to equal clean and "
            f"corrupted lengths with this tokenizer; ask for fewer (n={len(keep)})"
        )
    with_wrong = keep[0][3] is not None
    task = Task.from_texts(
        tok,
        [r[0] for r in keep],
        [r[1] for r in keep],
        [r[2] for r in keep],
        [r[3] for r in keep] if with_wrong else None,  # type: ignore[misc]
        metric=metric,
        first_token=first_token,
        name=name,
        description=description,
        prefix=bos_prefix(source, tok, add_bos=add_bos),
        allow_unk=allow_unk,
    )
    task.meta.update(meta or {})
    task.meta["skipped_pairs"] = skipped
    return task


def draw_rows(make: Any, n: int, seed: int, factor: int = 4) -> list[Row]:
    """``factor * n`` rows from ``make(rng, i)`` (spares for pairs that must be skipped)."""
    import random

    rng = random.Random(seed)
    return [make(rng, i) for i in range(factor * n + 8)]
