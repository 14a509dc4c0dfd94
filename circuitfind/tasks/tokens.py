"""Which token ids a task may draw, and whether a prompt starts with BOS.

**Ordinary tokens** (:func:`ordinary_token_ids`): the ids a task or probe draws at random (the
induction task, the repeated-token probe). Never a special token; the rule:

- *With a tokenizer*: every id below ``min(len(tokenizer), d_vocab)`` except the tokenizer's
  special tokens, its added control tokens (an added token written ``<...>`` or ``[...]``:
  Gemma's ``<unused0>``..``<unused6241>`` and ``[multimodal]``, Qwen's ``<think>``,
  ``<|fim_prefix|>``), the model config's BOS/EOS/PAD/UNK ids, and the byte-fallback tokens
  ``<0x00>``..``<0xFF>`` of SentencePiece vocabularies (Llama-2, Mistral, Gemma). Byte-fallback
  tokens stand for the raw UTF-8 bytes of characters the vocabulary lacks; a random string of
  them is not text (most are not even valid UTF-8 alone), so they are left out.
- *Without a tokenizer* (ids only): every id below ``d_vocab`` except the config's BOS/EOS/PAD/
  UNK ids and the blocks the family's published vocabularies reserve: for SentencePiece families
  with byte fallback (``llama`` with at most 64,000 ids, i.e. Llama-1/2-style; ``mistral``;
  ``gemma``, ``gemma2``, ``gemma3_text``) the first 512 ids, which hold their special tokens,
  Gemma's first unused tokens and the 256 byte-fallback tokens (Llama-2: ids 3-258; Gemma-3:
  238-493); the top blocks the families' vocabularies reserve, which configs do not always name
  (Gemma-3: ids from 255,999 on, image and unused tokens and embedding padding; Qwen2/Qwen3:
  from 151,643 on, ``<|endoftext|>`` then control tokens and padding; ``llama`` with at least
  128,000 ids, i.e. Llama-3-style: from 128,000 on, its 256 reserved special tokens); and for
  every family every id from the smallest config special id that lies in the upper half of the
  vocabulary on (GPT-2's 50,256), where byte-level BPE vocabularies keep their special tokens and
  the embedding's padding rows.

**BOS** (:func:`bos_prefix`), unless ``add_bos=True`` or ``False`` says otherwise: a prompt
starts with the BOS token where the tokenizer itself puts it first (Gemma's, Llama-2's), or where
the model's family is trained with one (``llama``, ``mistral``, ``gemma``, ``gemma2``,
``gemma3_text``; not ``gpt2``, ``gpt_neo``, ``gpt_neox``, ``qwen2``, ``qwen3`` or the others) and
the config (or tokenizer) has a BOS id distinct from its EOS id. The last condition tells
Meta-, Mistral- and Google-style checkpoints (BOS 1 or 2 or 128,000, EOS another id) from
Llama-architecture models trained GPT-2-style with one ``<|endoftext|>`` for both and no BOS
(SmolLM; the zoo's ``ioi`` model). So the Llama-3 ``tokenizer.json`` that adds no BOS itself
still gets ``<|begin_of_text|>`` on a llama model.
"""

from __future__ import annotations

import re
from typing import Any

from circuitfind.errors import InputError
from circuitfind.tasks.tokenize import resolve_tokenizer

__all__ = [
    "BOS_FAMILIES",
    "bos_prefix",
    "config_special_ids",
    "ordinary_token_ids",
    "random_ordinary_tokens",
    "tokenizer_adds_bos",
]

BOS_FAMILIES = frozenset({"llama", "mistral", "gemma", "gemma2", "gemma3", "gemma3_text"})
"""Families whose models are trained with a BOS token first."""

_SENTENCEPIECE = frozenset({"mistral", "gemma", "gemma2", "gemma3", "gemma3_text"})
_TOP = {  # the first id of the reserved block at the top of each family's vocabulary
    "gemma3": 255_999,  # <start_of_image>; then image and unused tokens, then padding
    "gemma3_text": 255_999,
    "qwen2": 151_643,  # <|endoftext|>; then <|im_start|>, ..., then padding
    "qwen3": 151_643,
}
_LLAMA3_TOP = 128_000  # <|begin_of_text|> and the 255 reserved special tokens after it
_CONTROL = re.compile(r"^(<[^<>\s]+>|\[[^\[\]\s]+\])$")
_BYTE = re.compile(r"^<0x[0-9A-Fa-f]{2}>$")


def _hf_config(source: Any) -> Any:
    """The Hugging Face config of a circuitfind Model (or an HF model, or a config), or None."""
    for attr in ("hf_model", None):
        obj = getattr(source, attr, None) if attr else source
        cfg = getattr(obj, "config", None)
        if cfg is not None and hasattr(cfg, "to_dict"):
            return cfg
    return None


def _family(source: Any) -> str | None:
    cfg = getattr(source, "cfg", None)
    family = getattr(cfg, "family", None)
    if family is None:
        family = getattr(_hf_config(source), "model_type", None)
    return str(family) if family is not None else None


def _d_vocab(source: Any) -> int | None:
    d = getattr(getattr(source, "cfg", None), "d_vocab", None)
    if d is None:
        d = getattr(_hf_config(source), "vocab_size", None)
    return int(d) if d is not None else None


def config_special_ids(source: Any) -> set[int]:
    """The BOS/EOS/PAD/UNK ids the model's config names (EOS may be a list)."""
    cfg = _hf_config(source)
    out: set[int] = set()
    if cfg is None:
        return out
    for name in ("bos_token_id", "eos_token_id", "pad_token_id", "unk_token_id", "sep_token_id"):
        value = getattr(cfg, name, None)
        values = value if isinstance(value, (list, tuple)) else [value]
        out.update(int(v) for v in values if v is not None)
    return out


def _tokenizer_excluded(tok: Any) -> set[int]:
    out = set(getattr(tok, "all_special_ids", []) or [])
    for name in ("bos_token_id", "eos_token_id", "pad_token_id", "unk_token_id"):
        value = getattr(tok, name, None)
        if value is not None:
            out.add(int(value))
    added = getattr(tok, "added_tokens_decoder", None) or {}
    for i, token in added.items():
        content = str(getattr(token, "content", token))
        if getattr(token, "special", False) or _CONTROL.match(content):
            out.add(int(i))
    return out


def _byte_fallback_ids(tok: Any) -> set[int]:
    vocab = tok.get_vocab()
    return {int(i) for t, i in vocab.items() if _BYTE.match(t)}


def ordinary_token_ids(source: Any, tokenizer: Any = None) -> list[int]:
    """The ids a task may draw at random for ``source`` (a model, a tokenizer, or both), sorted.

    Args:
        source: a circuitfind Model (its ``.tokenizer`` is used if it has one), an object with
            ``.tokenizer`` and/or ``.cfg``, or a tokenizer.
        tokenizer: a tokenizer to use instead of the model's.

    The rule (module docstring): never a special token, nor a byte-fallback token, nor an id the
    model's vocabulary or family reserves.
    """
    tok = tokenizer if tokenizer is not None else resolve_tokenizer(source, required=False)
    d_vocab = _d_vocab(source)
    excluded = config_special_ids(source)
    if tok is not None:
        hi = len(tok) if d_vocab is None else min(len(tok), d_vocab)
        excluded |= _tokenizer_excluded(tok) | _byte_fallback_ids(tok)
        lo = 0
    else:
        if d_vocab is None:
            raise InputError(
                "drawing token ids needs a tokenizer or a model whose cfg has d_vocab; pass one"
            )
        family = _family(source) or ""
        lo, hi = 0, d_vocab
        sentencepiece = family in _SENTENCEPIECE or (family == "llama" and d_vocab <= 64_000)
        if sentencepiece and d_vocab > 2048:
            lo = 512
        if family in _TOP and d_vocab > _TOP[family]:
            hi = _TOP[family]
        if family == "llama" and d_vocab >= _LLAMA3_TOP:
            hi = min(hi, _LLAMA3_TOP)
        top = [i for i in excluded if d_vocab // 2 <= i < hi]
        if top:
            hi = min(top)
    ids = [i for i in range(lo, hi) if i not in excluded]
    if not ids:
        raise InputError(f"the vocabulary has no ordinary tokens (ids {lo}..{hi - 1} all reserved)")
    return ids


def tokenizer_adds_bos(tok: Any) -> bool:
    """Whether the tokenizer itself puts its BOS first when encoding with special tokens."""
    bos = getattr(tok, "bos_token_id", None)
    if bos is None:
        return False
    ids = list(tok("a", add_special_tokens=True)["input_ids"])
    return bool(ids) and ids[0] == bos


def _ids_of(value: Any) -> list[int]:
    values = value if isinstance(value, (list, tuple)) else [value]
    return [int(v) for v in values if v is not None]


def _bos_id(source: Any, tok: Any) -> int | None:
    if tok is not None and getattr(tok, "bos_token_id", None) is not None:
        return int(tok.bos_token_id)
    ids = _ids_of(getattr(_hf_config(source), "bos_token_id", None))
    return ids[0] if ids else None


def _eos_ids(source: Any, tok: Any) -> set[int]:
    out = set(_ids_of(getattr(_hf_config(source), "eos_token_id", None)))
    if tok is not None:
        out |= set(_ids_of(getattr(tok, "eos_token_id", None)))
    return out


def bos_prefix(source: Any, tokenizer: Any = None, *, add_bos: bool | None = None) -> list[int]:
    """The ids every prompt starts with: ``[bos]`` or ``[]`` (rule: module docstring).

    Args:
        source: a circuitfind Model, an object with ``.tokenizer``/``.cfg``, or a tokenizer.
        tokenizer: a tokenizer to use instead of the model's.
        add_bos: ``True``/``False`` to force BOS on or off; ``None`` follows the tokenizer and
            the family (module docstring).

    Raises:
        InputError: ``add_bos=True`` but neither the tokenizer nor the config has a BOS token.
    """
    tok = tokenizer if tokenizer is not None else resolve_tokenizer(source, required=False)
    bos = _bos_id(source, tok)
    if add_bos is None:
        if tok is not None and tokenizer_adds_bos(tok):
            add_bos = True
        else:
            add_bos = (
                _family(source) in BOS_FAMILIES
                and bos is not None
                and bos not in _eos_ids(source, tok)
            )
    if not add_bos:
        return []
    if bos is None:
        raise InputError(
            "add_bos=True but neither the tokenizer nor the model's config has a BOS token; "
            "pass add_bos=False"
        )
    return [bos]


def random_ordinary_tokens(
    source: Any, n: int, length: int, *, seed: int = 0, distinct: bool = True
) -> Any:
    """``LongTensor[n, length]`` of random ordinary token ids (no BOS; see :func:`bos_prefix`).

    For probes such as the repeated-random-tokens pattern probe: ids come from
    :func:`ordinary_token_ids`, distinct within a row when ``distinct`` and the vocabulary
    allows. Deterministic for a seed.
    """
    import torch

    if n < 1 or length < 1:
        raise InputError(f"n and length must be at least 1; got {n}, {length}")
    usable = torch.tensor(ordinary_token_ids(source), dtype=torch.long)
    gen = torch.Generator().manual_seed(seed)
    if distinct and len(usable) >= length:
        picks = torch.stack([torch.randperm(len(usable), generator=gen)[:length] for _ in range(n)])
    else:
        picks = torch.randint(0, len(usable), (n, length), generator=gen)
    return usable[picks]
