"""Named token spans of built-in tasks (for position-aware edges), found from the token ids.

Each function returns name -> ``LongTensor[n]`` (a position a prompt) or ``[n, 2]`` (start,
stop), or leaves a span out when some prompt does not contain it (a tokenizer that merges a
name with its neighbour, say), so a task never carries a span that is wrong for some prompt.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import torch
from torch import Tensor

__all__ = ["greater_than_spans", "induction_spans", "ioi_spans", "occurrence"]

logger = logging.getLogger(__name__)


def occurrence(tokens: Tensor, ids: Tensor, k: int = 0, limit: Tensor | None = None) -> Tensor:
    """The position of the ``k``-th occurrence (0 = first) of ``ids[i]`` in ``tokens[i]``,
    before ``limit[i]`` when given: [n] (-1 where there is none)."""
    n, T = tokens.shape
    hit = tokens == ids[:, None]
    if limit is not None:
        hit &= torch.arange(T)[None, :] < limit[:, None]
    rank = hit.long().cumsum(1)
    found = hit & (rank == k + 1)
    pos = torch.where(found.any(1), found.float().argmax(1), torch.full((n,), -1))
    return pos.long()


def ioi_spans(clean: Tensor, answer: Tensor, wrong: Tensor, readout: Tensor) -> dict[str, Tensor]:
    """IOI's S1 (first subject), IO (indirect object), S2 (repeated subject), END (readout):
    the IO and S tokens are the answer and wrong tokens (single-token names)."""
    io = occurrence(clean, answer, 0, readout)
    s1 = occurrence(clean, wrong, 0, readout)
    s2 = occurrence(clean, wrong, 1, readout + 1)
    spans = {"S1": s1, "IO": io, "S2": s2}
    missing = [k for k, v in spans.items() if bool((v < 0).any())]
    if missing:
        logger.info("ioi: spans %s not found in every prompt; not recorded", missing)
        return {"END": readout.clone()}
    return {**spans, "END": readout.clone()}


def induction_spans(n: int, start: int, length: int) -> dict[str, Tensor]:
    """Induction's ``first`` (the first occurrence A, ``length`` tokens from ``start``),
    ``repeat`` (the repeat before the query) and ``END`` (the query, the last token)."""
    first = torch.tensor([start, start + length]).expand(n, 2).clone()
    end = start + 2 * length - 2
    repeat = torch.tensor([start + length, end]).expand(n, 2).clone()
    return {"first": first, "repeat": repeat, "END": torch.full((n,), end)}


def greater_than_spans(
    clean: Tensor, corrupted: Tensor, readout: Tensor, nouns: Sequence[Sequence[int]]
) -> dict[str, Tensor]:
    """Greater-than's ``NOUN`` (the event noun's tokens), ``YY`` (the start year's two digits:
    the one token where clean and corrupted differ) and ``END`` (the readout, after the
    century)."""
    n, T = clean.shape
    differs = clean != corrupted
    yy = torch.where(differs.any(1), differs.float().argmax(1), torch.full((n,), -1)).long()
    spans: dict[str, Tensor] = {}
    noun = torch.full((n, 2), -1, dtype=torch.long)
    for i, ids in enumerate(nouns):
        row, m = clean[i].tolist(), len(ids)
        for p in range(T - m + 1):
            if m and row[p : p + m] == list(ids):
                noun[i] = torch.tensor([p, p + m])
                break
    if bool((noun >= 0).all()):
        spans["NOUN"] = noun
    if bool((yy >= 0).all()):
        spans["YY"] = yy
    spans["END"] = readout.clone()
    return spans
