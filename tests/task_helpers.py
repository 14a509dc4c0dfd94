"""Tokenizers built offline for the task tests: a word-level one and a small byte-level BPE."""

from __future__ import annotations

import re
from functools import cache

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast

from circuitfind.tasks import greater_than, ioi
from circuitfind.zoo.tokenizer import word_level_tokenizer


def words_of(*texts: str) -> list[str]:
    seen: dict[str, None] = {}
    for text in texts:
        for w in re.findall(r"\w+|[^\w\s]+", text):
            seen.setdefault(w, None)
    return list(seen)


@cache
def word_tokenizer() -> PreTrainedTokenizerFast:
    """Knows every IOI and greater-than word, 30 names, and two-digit years."""
    texts = [
        *ioi.TEMPLATES,
        *ioi.PLACES,
        *ioi.OBJECTS,
        *ioi.NAMES[:30],
        *greater_than.TEMPLATES,
        *greater_than.NOUNS,
        "A B C D E",
    ]
    words = [w for w in words_of(*texts) if not re.fullmatch(r"\d+", w)]
    words = [w for w in words if w not in {"[", "]", "{", "}", ".[", "],"}]
    years = [f"{y:02d}" for y in range(100)]
    return word_level_tokenizer(
        words + [w for w in years if w not in words], split_digit_pairs=True
    )


@cache
def bpe_tokenizer() -> PreTrainedTokenizerFast:
    """A GPT-2-style byte-level BPE trained on a few sentences: common names are one token."""
    tk = Tokenizer(models.BPE())
    tk.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tk.decoder = decoders.ByteLevel()
    names = ioi.NAMES[:12]
    lines = []
    for t in ioi.TEMPLATES:
        for i in range(len(names)):
            a, b = names[i], names[(i + 1) % len(names)]
            text = t.replace("[A]", a).replace("[B]", b)
            for p, o in zip(ioi.PLACES, ioi.OBJECTS):
                lines.append(text.replace("[PLACE]", p).replace("[OBJECT]", o))
    trainer = trainers.BpeTrainer(
        vocab_size=600,
        special_tokens=["<|endoftext|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tk.train_from_iterator(lines, trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=tk,
        bos_token="<|endoftext|>",
        eos_token="<|endoftext|>",
        unk_token="<|endoftext|>",
    )
