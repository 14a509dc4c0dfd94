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
    "unknown_words",
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


def unknown_words(tok: Any, text: str) -> list[str]:
    """The words of ``text`` that the tokenizer turns into its unknown token (in order, once).

    Byte-level BPEs (GPT-2, Llama-3, Qwen) and SentencePiece vocabularies with byte fallback
    (Llama-2, Gemma) have no unknown token in practice; word-level vocabularies (the zoo's) do.
    A "word" is the whitespace-delimited stretch of ``text`` around each unknown token.
    """
    unk = getattr(tok, "unk_token_id", None)
    if unk is None:
        return []
    try:
        enc = tok(text, add_special_tokens=False, return_offsets_mapping=True)
        spans = [o for i, o in zip(enc["input_ids"], enc["offset_mapping"]) if i == unk]
    except (NotImplementedError, TypeError, ValueError):  # slow tokenizers have no offsets
        spans = [] if unk not in encode(tok, text, special=False) else [(0, len(text))]
    words: list[str] = []
    for start, end in spans:
        while start > 0 and not text[start - 1].isspace():
            start -= 1
        while end < len(text) and not text[end].isspace():
            end += 1
        word = text[start:end].strip() or text
        if word not in words:
            words.append(word)
    return words


def is_single_token(tok: Any, text: str) -> bool:
    """Whether ``text`` (e.g. ``" Mary"``) is exactly one known (non-UNK) token."""
    ids = encode(tok, text, special=False)
    unk = getattr(tok, "unk_token_id", None)
    return len(ids) == 1 and (unk is None or ids[0] != unk)
