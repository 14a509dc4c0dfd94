"""Tokenizer helpers shared by the task generators: find the tokenizer, encode, show tokens."""

from __future__ import annotations

from typing import Any

from circuitfind.errors import InputError

__all__ = [
    "encode",
    "is_single_token",
    "pad_id",
    "resolve_tokenizer",
    "show",
    "special_ids",
    "vocab_size",
]


def resolve_tokenizer(source: Any, *, required: bool = True) -> Any:
    """The tokenizer of ``source``: a circuitfind Model (or any object with ``.tokenizer``), or a
    Hugging Face tokenizer itself. ``None`` when there is none and ``required`` is False."""
    tok = getattr(source, "tokenizer", None) if not _looks_like_tokenizer(source) else source
    if tok is None and required:
        raise InputError(
            "this task needs a tokenizer, and the model has none; pass a tokenizer, or build "
            "the task with Task.from_tokens(...)"
        )
    return tok


def _looks_like_tokenizer(obj: Any) -> bool:
    return hasattr(obj, "convert_ids_to_tokens") and hasattr(obj, "encode")


def encode(tok: Any, text: str, *, special: bool = True) -> list[int]:
    """Token ids of ``text``; ``special`` adds the tokenizer's own prefix (a BOS, say)."""
    return list(tok(text, add_special_tokens=special)["input_ids"])


def show(tok: Any, ids: list[int]) -> list[str]:
    """Tokens as strings, for error messages."""
    return [str(t) for t in tok.convert_ids_to_tokens(list(ids))]


def special_ids(tok: Any) -> set[int]:
    """Ids of the tokenizer's special tokens (BOS, EOS, PAD, UNK, ...)."""
    ids = set(getattr(tok, "all_special_ids", []) or [])
    for name in ("bos_token_id", "eos_token_id", "pad_token_id", "unk_token_id"):
        value = getattr(tok, name, None)
        if value is not None:
            ids.add(int(value))
    return ids


def vocab_size(tok: Any) -> int:
    """Number of token ids the tokenizer can produce."""
    return len(tok)


def pad_id(tok: Any) -> int:
    """The id used to pad prompts on the right (pad, else eos, else 0)."""
    for name in ("pad_token_id", "eos_token_id"):
        value = getattr(tok, name, None)
        if value is not None:
            return int(value)
    return 0


def is_single_token(tok: Any, text: str) -> bool:
    """Whether ``text`` (e.g. ``" Mary"``) is exactly one known (non-UNK) token."""
    ids = encode(tok, text, special=False)
    unk = getattr(tok, "unk_token_id", None)
    return len(ids) == 1 and (unk is None or ids[0] != unk)
