"""zoo:docstring — a three-layer GPT-2 that completes Python docstrings with the next argument's
name (the docstring task of Heimersheim & Janiak 2023, on a word-level vocabulary).

Training prompts are the built-in ``docstring`` task's: ``def F(self, A1, ..., An):`` then a
docstring documenting the first k arguments, then ``:param`` and the next argument, with n in
3..6 and k in 1..n-1 (the built-in task has n=4, k=2), names from the task's word list. Held
out: 20% of the words never follow ``:param`` as the answer in training (they still appear
everywhere else), so the held-out score is copying a name the model never produced there.

The documented arguments are always the first k in order, so the model can (and does) locate the
answer by position: the ``random_doc`` corruption (docstring names changed, ``def`` line kept)
leaves its logit difference unchanged (13.98 clean and corrupted on 64 prompts), so use
``random_random`` (the default) or ``random_def`` with it.
"""

from __future__ import annotations

import random
import re
from typing import Any

import torch
from torch import Tensor
from transformers import GPT2Config, GPT2LMHeadModel

from circuitfind.tasks import Task
from circuitfind.tasks import docstring as ds
from circuitfind.zoo.recipe import Recipe, Sampler, register_recipe, task_scores
from circuitfind.zoo.tokenizer import word_level_tokenizer

__all__ = ["split"]

ANSWER_WEIGHT = 5.0
SPLIT_SEED = 2468
WORDS = ds.WORDS


def split() -> dict[str, list[str]]:
    """Words that may be the answer in training, and the held-out ones."""
    words = list(WORDS)
    random.Random(SPLIT_SEED).shuffle(words)
    cut = len(words) // 5
    return {"held": sorted(words[:cut]), "train": sorted(words[cut:])}


def _prompt(rng: random.Random, n_args: int, k: int, answer_pool: list[str]) -> tuple[str, str]:
    """(prompt, answer): the answer (argument k) from ``answer_pool``, the rest from all words."""
    answer = rng.choice(answer_pool)
    rest = rng.sample([w for w in WORDS if w != answer], n_args + 3 + 2 * k)
    args = rest[1:n_args]
    args.insert(k, answer)
    desc = rest[n_args:]
    return ds._prompt(rest[0], args, args, desc, k), answer


def vocabulary() -> list[str]:
    words: dict[str, None] = {}
    sample = ds._prompt("f", ["a", "b", "c"], ["a", "b", "c"], ["x"] * 9, 3)
    for w in re.findall(r"\w+|[^\w\s]+", sample):
        if len(w) > 1 or not w.isalpha():
            words.setdefault(w, None)
    for w in WORDS:
        words.setdefault(w, None)
    return list(words)


def build() -> tuple[Any, Any]:
    tok = word_level_tokenizer(vocabulary())
    cfg = GPT2Config(
        vocab_size=len(tok),
        n_embd=64,
        n_layer=3,
        n_head=4,
        n_positions=64,
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
    )
    return GPT2LMHeadModel(cfg), tok


def sampler(tok: Any) -> Sampler:
    pool = split()["train"]

    def sample(gen: torch.Generator, batch: int) -> tuple[Tensor, Tensor]:
        rng = random.Random(int(torch.randint(0, 2**31 - 1, (1,), generator=gen)))
        texts = []
        for _ in range(batch):
            n_args = rng.randint(3, 6)
            prompt, answer = _prompt(rng, n_args, rng.randint(1, n_args - 1), pool)
            texts.append(f"{prompt} {answer}")
        enc = tok(texts, padding=True, return_tensors="pt", add_special_tokens=False)
        tokens, mask = enc["input_ids"], enc["attention_mask"]
        weight = mask[:, 1:].float()
        last = mask.sum(-1) - 2
        weight[torch.arange(batch), last] = ANSWER_WEIGHT
        return tokens, weight

    return sample


def held_out_task(tok: Any, seed: int, n: int = 400) -> Task:
    """Built-in-shaped prompts (n=4, k=2) whose answer is a held-out word; random_random
    corruption (fresh names in the def line and the docstring)."""
    rng = random.Random(seed)
    held = split()["held"]
    clean, corrupted, answer, wrong = [], [], [], []
    for _ in range(n):
        prompt, ans = _prompt(rng, 4, 2, held)
        args = re.match(r"def \w+\(self, ([^)]*)\)", prompt).group(1).split(", ")  # type: ignore[union-attr]
        fresh = rng.sample([w for w in WORDS if w not in re.findall(r"\w+", prompt)], 4)
        doc = prompt.split('"""', 1)[1]
        for old, new in zip(args, fresh):
            doc = doc.replace(f":param {old}:", f":param {new}:")
        head = prompt.split('"""', 1)[0].replace(", ".join(args), ", ".join(fresh))
        clean.append(prompt)
        corrupted.append(f'{head}"""{doc}')
        answer.append(" " + ans)
        wrong.append([" " + a for a in args if a != ans])
    return Task.from_texts(
        tok, clean, corrupted, answer, wrong, metric="logit_diff", name="docstring-held-out"
    )


def evaluate(model: Any, tok: Any, seed: int) -> dict[str, float]:
    return task_scores(model, tok, held_out_task(tok, seed), "docstring", seed, "logit_diff")


register_recipe(
    Recipe(
        name="docstring",
        family="gpt2",
        summary=(
            "Three-layer GPT-2 (d_model 64, 4 heads) that names the next argument after "
            "':param' in a Python docstring."
        ),
        build=build,
        sampler=sampler,
        evaluate=evaluate,
        targets={"held_out_accuracy": 0.9, "builtin_docstring_accuracy": 0.9},
        data=(
            f"Docstring prompts of the built-in task over its {len(WORDS)} words: n in 3..6 "
            "arguments, the first k in 1..n-1 documented, then ':param' and argument k+1; 20% "
            "of the words never the answer in training (split seed 2468). Next-token loss on "
            f"every token, the answer weighted {ANSWER_WEIGHT:g}x. Scored on 400 held-out "
            "prompts (n=4, k=2, answers from the held-out words, random_random corruption) "
            "and on the built-in docstring task."
        ),
        steps=1200,
        lr=3e-3,
        weight_decay=0.01,
        batch=64,
    )
)
