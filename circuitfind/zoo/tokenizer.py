"""Word-level tokenizers for the zoo: a real ``tokenizers`` tokenizer, saved as tokenizer.json."""

from __future__ import annotations

from collections.abc import Iterable

from tokenizers import Regex, Tokenizer, models, pre_tokenizers
from transformers import PreTrainedTokenizerFast

__all__ = ["BOS", "PAD", "UNK", "word_level_tokenizer"]

BOS = "<|endoftext|>"  # also EOS
PAD = "<pad>"
UNK = "<unk>"


def word_level_tokenizer(
    words: Iterable[str], *, split_digit_pairs: bool = False
) -> PreTrainedTokenizerFast:
    """A word-level tokenizer over ``words`` (ids in the given order, then BOS/EOS, PAD, UNK).

    Text is split on whitespace and punctuation (``"Then, Mary"`` -> ``Then`` ``,`` ``Mary``);
    with ``split_digit_pairs`` a number is also cut into two-digit tokens (``1732`` -> ``17``
    ``32``), like GPT-2 does for years. Decoding joins tokens with spaces.
    """
    vocab: dict[str, int] = {}
    for word in [*words, BOS, PAD, UNK]:
        if word in vocab:
            raise ValueError(f"duplicate word {word!r} in the vocabulary")
        vocab[word] = len(vocab)
    tk = Tokenizer(models.WordLevel(vocab=vocab, unk_token=UNK))
    pre: list[pre_tokenizers.PreTokenizer] = [pre_tokenizers.Whitespace()]
    if split_digit_pairs:
        pre.append(pre_tokenizers.Split(Regex(r"\d\d"), behavior="isolated"))
    tk.pre_tokenizer = pre_tokenizers.Sequence(pre)
    return PreTrainedTokenizerFast(
        tokenizer_object=tk,
        bos_token=BOS,
        eos_token=BOS,
        pad_token=PAD,
        unk_token=UNK,
        clean_up_tokenization_spaces=False,
    )
