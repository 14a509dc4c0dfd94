"""Helpers the inspection tools share: tokens from text, answer ids, readout positions."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import torch
from torch import Tensor

from circuitfind.errors import InputError

if TYPE_CHECKING:
    from circuitfind.model import Model

__all__ = ["as_tokens", "readout_positions", "token_ids"]

TokensLike = Tensor | str | Sequence[str] | Sequence[int] | Sequence[Sequence[int]]
AnswerLike = int | str | Tensor | Sequence[int] | Sequence[str]


def as_tokens(
    model: Model, tokens: TokensLike, attention_mask: Tensor | None = None
) -> tuple[Tensor, Tensor | None]:
    """Token ids [batch, pos] (and the attention mask) from ids or text.

    Text is tokenized right-padded; the attention mask is returned when the batch is padded.
    """
    if isinstance(tokens, str) or (
        isinstance(tokens, Sequence) and len(tokens) > 0 and isinstance(tokens[0], str)
    ):
        texts = [tokens] if isinstance(tokens, str) else list(tokens)  # type: ignore[list-item]
        if model.tokenizer is None:
            raise InputError("this model has no tokenizer; pass token ids instead of text")
        model.tokenizer.padding_side = "right"
        enc = model.tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=False)
        ids, mask = enc["input_ids"].to(model.device), enc["attention_mask"].to(model.device)
        return ids, (mask if not bool(mask.all()) else None)
    ids = model.check_tokens(torch.as_tensor(tokens), attention_mask)
    return ids, attention_mask


def token_ids(model: Model, answer: AnswerLike, batch: int) -> Tensor:
    """One token id per batch row [batch] from an id, a string, or one per row."""
    if isinstance(answer, Tensor):
        ids = answer.reshape(-1).long()
    elif isinstance(answer, int):
        ids = torch.tensor([answer])
    elif isinstance(answer, str):
        ids = torch.tensor([_single_token(model, answer)])
    else:
        ids = torch.tensor(
            [_single_token(model, a) if isinstance(a, str) else int(a) for a in answer]
        )
    if ids.numel() == 1:
        ids = ids.expand(batch)
    if ids.numel() != batch:
        raise InputError(
            f"got {ids.numel()} answers for a batch of {batch}; give one or one per row"
        )
    if bool(((ids < 0) | (ids >= model.cfg.d_vocab)).any()):
        raise InputError(
            f"answer ids {ids.tolist()} are outside the vocabulary [0, {model.cfg.d_vocab})"
        )
    return ids.to(model.device)


def _single_token(model: Model, text: str) -> int:
    if model.tokenizer is None:
        raise InputError("this model has no tokenizer; give answers as token ids")
    ids = model.tokenizer(text, add_special_tokens=False)["input_ids"]
    if len(ids) != 1:
        raise InputError(
            f"answer {text!r} is {len(ids)} tokens ({ids}); give a single-token answer "
            "(often with a leading space, e.g. ' Mary') or its token id"
        )
    return int(ids[0])


def readout_positions(
    tokens: Tensor, attention_mask: Tensor | None, position: int | Tensor | None
) -> Tensor:
    """The readout position of each row [batch]: the given one, else the last real token."""
    batch, seq = tokens.shape
    if position is None:
        if attention_mask is None:
            return torch.full((batch,), seq - 1, dtype=torch.long, device=tokens.device)
        mask = attention_mask.to(tokens.device).long()
        # last index whose mask is 1 (works for left and right padding)
        idx = torch.arange(seq, device=tokens.device).expand(batch, seq)
        return (idx * mask).amax(-1)
    pos = torch.as_tensor(position, device=tokens.device).long().reshape(-1)
    pos = torch.where(pos < 0, pos + seq, pos)
    if bool(((pos < 0) | (pos >= seq)).any()):
        raise InputError(f"position {position} is outside the sequence of {seq} tokens")
    return pos.expand(batch) if pos.numel() == 1 else pos
