"""zoo:greater-than — a two-layer GPT-NeoX (parallel attention+MLP, partial rotary) that continues
"The war lasted from the year 1732 to the year 17" with a later year.

Word-level vocabulary in which a year is two two-digit tokens (``17`` ``32``), like GPT-2. Each
training sentence states a span ``from the year C YY to the year C ZZ`` with ZZ uniform above YY,
over the built-in task's templates and nouns and centuries 15-19. Held out: 20% of the
(noun, YY) combinations.
"""

from __future__ import annotations

import itertools
import random
from typing import Any

import torch
from torch import Tensor
from transformers import GPTNeoXConfig, GPTNeoXForCausalLM

from circuitfind.tasks import Task
from circuitfind.tasks import greater_than as gt_task
from circuitfind.zoo.recipe import Recipe, Sampler, register_recipe, task_scores
from circuitfind.zoo.tokenizer import word_level_tokenizer

__all__ = ["CENTURIES", "split"]

CENTURIES = [15, 16, 17, 18, 19]
NOUNS = gt_task.NOUNS
TEMPLATES = gt_task.TEMPLATES
ANSWER_WEIGHT = 5.0
SPLIT_SEED = 1234


def split() -> dict[str, list[tuple[str, int]]]:
    """Train/held-out (noun, YY) combinations, YY in 00..98."""
    combos = list(itertools.product(NOUNS, range(99)))
    random.Random(SPLIT_SEED).shuffle(combos)
    cut = len(combos) // 5
    return {"held": combos[:cut], "train": combos[cut:]}


def vocabulary() -> list[str]:
    words: dict[str, None] = {}
    for t in TEMPLATES:
        for w in t.replace("{noun}", " ").replace("{century}{yy}", " ").split():
            if not w.startswith("{"):
                words.setdefault(w, None)
    for w in NOUNS:
        words.setdefault(w, None)
    for y in range(100):
        words.setdefault(f"{y:02d}", None)
    return list(words)


def build() -> tuple[Any, Any]:
    tok = word_level_tokenizer(vocabulary(), split_digit_pairs=True)
    cfg = GPTNeoXConfig(
        vocab_size=len(tok),
        hidden_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=256,
        rope_parameters={
            "rope_type": "default",
            "rope_theta": 10000.0,
            "partial_rotary_factor": 0.25,
        },
        max_position_embeddings=32,
        use_parallel_residual=True,
        tie_word_embeddings=False,
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
    )
    return GPTNeoXForCausalLM(cfg), tok


def _text(template: str, noun: str, century: int, yy: int) -> str:
    return template.format(noun=noun, century=century, yy=f"{yy:02d}")


def sampler(tok: Any) -> Sampler:
    combos = split()["train"]

    def sample(gen: torch.Generator, batch: int) -> tuple[Tensor, Tensor]:
        rng = random.Random(int(torch.randint(0, 2**31 - 1, (1,), generator=gen)))
        texts = []
        for _ in range(batch):
            noun, yy = rng.choice(combos)
            zz = rng.randint(yy + 1, 99)
            c = rng.choice(CENTURIES)
            texts.append(f"{_text(rng.choice(TEMPLATES), noun, c, yy)}{zz:02d}")
        enc = tok(texts, padding=True, return_tensors="pt", add_special_tokens=False)
        tokens, mask = enc["input_ids"], enc["attention_mask"]
        weight = mask[:, 1:].float()
        last = mask.sum(-1) - 2
        weight[torch.arange(batch), last] = ANSWER_WEIGHT
        return tokens, weight

    return sample


def held_out_task(tok: Any, seed: int, n: int = 400) -> Task:
    """Greater-than prompts (century 17) on held-out (noun, YY) combinations, YY in 02..98."""
    rng = random.Random(seed)
    held = [(noun, yy) for noun, yy in split()["held"] if 2 <= yy <= 98]
    clean, corrupted, answer, wrong = [], [], [], []
    for _ in range(n):
        noun, yy = rng.choice(held)
        template = rng.choice(TEMPLATES)
        clean.append(_text(template, noun, 17, yy))
        corrupted.append(_text(template, noun, 17, 1))
        answer.append([f"{y:02d}" for y in range(yy + 1, 100)])
        wrong.append([f"{y:02d}" for y in range(yy + 1)])
    return Task.from_texts(
        tok, clean, corrupted, answer, wrong, metric="prob_diff", name="greater-than-held-out"
    )


def evaluate(model: Any, tok: Any, seed: int) -> dict[str, float]:
    return task_scores(model, tok, held_out_task(tok, seed), "greater-than", seed, "prob_diff")


register_recipe(
    Recipe(
        name="greater-than",
        family="gpt_neox",
        summary=(
            "Two-layer GPT-NeoX (d_model 64, 4 heads, parallel attention and MLP, rotary on a "
            "quarter of each head, untied) that puts its mass on years after the start year."
        ),
        build=build,
        sampler=sampler,
        evaluate=evaluate,
        targets={"held_out_accuracy": 0.9},
        data=(
            f"Sentences '<template> C YY ... C ZZ' from the {len(TEMPLATES)} built-in "
            f"greater-than templates and {len(NOUNS)} nouns, centuries {CENTURIES[0]}-"
            f"{CENTURIES[-1]}, YY in 00..98 and ZZ uniform in YY+1..99; 20% of the (noun, YY) "
            "combinations are held out (split seed 1234). Next-token loss on every token, the "
            f"final year weighted {ANSWER_WEIGHT:g}x. Scored on 400 held-out prompts (century "
            "17, YY in 02..98): accuracy = more probability on years after YY than at or before "
            "it; and on the built-in greater-than task."
        ),
        steps=2000,
        lr=1e-3,
        weight_decay=0.01,
        batch=64,
    )
)
