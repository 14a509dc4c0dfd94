"""zoo:agreement — a two-layer Mistral (GQA, rotary, untied) that does subject–verb
agreement across a prepositional phrase or a relative clause.

Word-level vocabulary of the built-in ``agreement`` task (its nouns, verbs, prepositions and
relative-clause verbs). Training sentences are ``The N [near the N2 | that the N2 V] VERB .``
with the verb agreeing with N, over all three structures, the attractor N2 of either number.
Held out: 20% of the (subject noun, verb) combinations, so the held-out score is agreement on
pairs never seen together. BOS and EOS are one ``<|endoftext|>`` and prompts have no BOS.
(Mistral rather than Qwen2: ``AutoTokenizer`` on a ``qwen2`` directory builds a
``Qwen2Tokenizer`` that ignores a word-level ``tokenizer.json``.)
"""

from __future__ import annotations

import itertools
import random
from typing import Any

import torch
from torch import Tensor
from transformers import MistralConfig, MistralForCausalLM

from circuitfind.tasks import Task
from circuitfind.tasks import agreement as agr
from circuitfind.zoo.recipe import Recipe, Sampler, register_recipe, task_scores
from circuitfind.zoo.tokenizer import word_level_tokenizer

__all__ = ["split"]

ANSWER_WEIGHT = 5.0
SPLIT_SEED = 4321
_RC = [(v + "s", v) for v in agr._RC_VERBS]  # (after a singular attractor, after a plural)


def split() -> dict[str, list[tuple[int, int]]]:
    """Train/held-out (noun index, verb index) combinations."""
    combos = list(itertools.product(range(len(agr.NOUNS)), range(len(agr.VERBS))))
    random.Random(SPLIT_SEED).shuffle(combos)
    cut = len(combos) // 5
    return {"held": combos[:cut], "train": combos[cut:]}


def vocabulary() -> list[str]:
    words: dict[str, None] = dict.fromkeys(["The", "the", "that", "."])
    for pair in [*agr.NOUNS, *agr.VERBS, *_RC]:
        for w in pair:
            words.setdefault(w, None)
    for w in agr._PREPS:
        words.setdefault(w, None)
    return list(words)


def build() -> tuple[Any, Any]:
    tok = word_level_tokenizer(vocabulary())
    cfg = MistralConfig(
        vocab_size=len(tok),
        hidden_size=64,
        intermediate_size=192,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=32,
        sliding_window=None,
        tie_word_embeddings=False,
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
    )
    return MistralForCausalLM(cfg), tok


def _sentence(rng: random.Random, noun: int, plural: bool, structure: str) -> str:
    subject = agr.NOUNS[noun][int(plural)]
    other = rng.choice([j for j in range(len(agr.NOUNS)) if j != noun])
    attractor_plural = rng.random() < 0.5
    attractor = agr.NOUNS[other][int(attractor_plural)]
    if structure == "simple":
        return f"The {subject}"
    if structure == "across_pp":
        return f"The {subject} {rng.choice(agr._PREPS)} the {attractor}"
    rc = rng.choice(_RC)[int(attractor_plural)]
    return f"The {subject} that the {attractor} {rc}"


def sampler(tok: Any) -> Sampler:
    combos = split()["train"]

    def sample(gen: torch.Generator, batch: int) -> tuple[Tensor, Tensor]:
        rng = random.Random(int(torch.randint(0, 2**31 - 1, (1,), generator=gen)))
        texts = []
        for _ in range(batch):
            noun, verb = rng.choice(combos)
            plural = rng.random() < 0.5
            prompt = _sentence(rng, noun, plural, rng.choice(agr.STRUCTURES))
            texts.append(f"{prompt} {agr.VERBS[verb][int(plural)]} .")
        enc = tok(texts, padding=True, return_tensors="pt", add_special_tokens=False)
        tokens, mask = enc["input_ids"], enc["attention_mask"]
        weight = mask[:, 1:].float()
        last = mask.sum(-1) - 3  # target index of the verb (before the final ".")
        weight[torch.arange(batch), last] = ANSWER_WEIGHT
        return tokens, weight

    return sample


def held_out_task(tok: Any, seed: int, n: int = 400) -> Task:
    """Agreement prompts (all three structures) on held-out (noun, verb) combinations."""
    rng = random.Random(seed)
    held = split()["held"]
    clean, corrupted, answer, wrong = [], [], [], []
    for i in range(n):
        noun, verb = rng.choice(held)
        plural = i % 2 == 1
        structure = agr.STRUCTURES[i % 3]
        state = rng.getstate()
        clean.append(_sentence(rng, noun, plural, structure))
        rng.setstate(state)  # the same attractor and filler, the subject's number flipped
        corrupted.append(_sentence(rng, noun, not plural, structure))
        answer.append(" " + agr.VERBS[verb][int(plural)])
        wrong.append(" " + agr.VERBS[verb][int(not plural)])
    return Task.from_texts(
        tok, clean, corrupted, answer, wrong, metric="logit_diff", name="agreement-held-out"
    )


def evaluate(model: Any, tok: Any, seed: int) -> dict[str, float]:
    return task_scores(model, tok, held_out_task(tok, seed), "agreement", seed, "logit_diff")


register_recipe(
    Recipe(
        name="agreement",
        family="mistral",
        summary=(
            "Two-layer Mistral (d_model 64, 4 query / 2 key-value heads, rotary, untied) "
            "that makes the verb agree with its subject across a phrase or relative clause."
        ),
        build=build,
        sampler=sampler,
        evaluate=evaluate,
        targets={"held_out_accuracy": 0.9, "builtin_agreement_accuracy": 0.9},
        data=(
            f"Sentences 'The N [P the N2 | that the N2 V] VERB .' over the built-in agreement "
            f"task's {len(agr.NOUNS)} noun pairs and {len(agr.VERBS)} verb pairs, the three "
            "structures uniform, subject and attractor numbers uniform; 20% of the (noun, verb) "
            "combinations held out (split seed 4321). Next-token loss on every token, the verb "
            f"weighted {ANSWER_WEIGHT:g}x. Scored on 400 held-out pairs (number-swap corruption) "
            "and on the built-in agreement task (across_pp)."
        ),
        steps=1500,
        lr=2e-3,
        weight_decay=0.01,
        batch=64,
    )
)
