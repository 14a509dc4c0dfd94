"""zoo:ioi — a three-layer Llama (GQA, rotary, untied) that does indirect object identification.

Word-level vocabulary over a synthetic corpus: IOI sentences built from openings x middles x
endings (the openings and endings cover the 15 templates of Wang et al. 2022, so the built-in
``ioi`` task runs on this model), mixed with other sentence types over the same words. Held out:
20% of the templates and 20% of the name pairs (every name is still an answer in training).
"""

from __future__ import annotations

import itertools
import random
from typing import Any

import torch
from torch import Tensor
from transformers import LlamaConfig, LlamaForCausalLM

from circuitfind.tasks import Task
from circuitfind.tasks import ioi as ioi_task
from circuitfind.zoo.recipe import Recipe, Sampler, register_recipe, task_scores
from circuitfind.zoo.tokenizer import word_level_tokenizer

__all__ = ["ENDINGS", "MIDDLES", "NAMES", "OPENINGS", "split"]

NAMES = ioi_task.NAMES[:40]
PLACES = ioi_task.PLACES
OBJECTS = ioi_task.OBJECTS

# {X} and {Y}: the pair (IO and S in either order); {C}: a distractor; {S}: the repeated subject
OPENINGS = [
    "Then, {X} and {Y} went to the {P}.",
    "Then, {X} and {Y} had a lot of fun at the {P}.",
    "Then, {X} and {Y} were working at the {P}.",
    "Then, {X} and {Y} were thinking about going to the {P}.",
    "Then, {X} and {Y} had a long argument.",
    "After {X} and {Y} went to the {P},",
    "When {X} and {Y} got a {O} at the {P},",
    "While {X} and {Y} were working at the {P},",
    "While {X} and {Y} were commuting to the {P},",
    "After the lunch, {X} and {Y} went to the {P}.",
    "Afterwards, {X} and {Y} went to the {P}.",
    "The {P} {X} and {Y} went to had a {O}.",
    "Friends {X} and {Y} found a {O} at the {P}.",
]
MIDDLES = [
    "",
    "It was a long day.",
    "{C} was there too.",
    "They talked with {C}.",
    "The {P} was busy.",
    "{C} left early.",
    "They were thinking about going home.",
    "Then they had a long argument, and afterwards",
]
ENDINGS = [
    "{S} gave a {O} to",
    "{S} decided to give a {O} to",
    "{S} wanted to give a {O} to",
    "{S} said to",
    "{S} decided to give it to",
    "{S} decided to give the {O} to",
    "Afterwards {S} said to",
    "{S} gave it to",
]
OTHER = [
    "{X} went to the {P}.",
    "{X} and {Y} were friends.",
    "The {O} was at the {P}.",
    "{X} found a {O} at the {P}, and {Y} went home.",
    "{X} said that the {P} was busy.",
]
ANSWER_WEIGHT = 5.0
SPLIT_SEED = 1234  # the held-out split is part of the recipe, the same for every training seed


def split() -> dict[str, list[Any]]:
    """Train/held-out templates (opening, middle, ending indices) and name pairs."""
    rng = random.Random(SPLIT_SEED)
    templates = list(itertools.product(range(len(OPENINGS)), range(len(MIDDLES)), range(8)))
    rng.shuffle(templates)
    pairs = list(itertools.combinations(NAMES, 2))
    rng.shuffle(pairs)
    cut_t, cut_p = len(templates) // 5, len(pairs) // 5
    held_pairs, train_pairs = pairs[:cut_p], pairs[cut_p:]
    answers = {n for p in train_pairs for n in p}
    assert answers == set(NAMES), "every name must be an answer in training"
    return {
        "held_templates": templates[:cut_t],
        "train_templates": templates[cut_t:],
        "held_pairs": held_pairs,
        "train_pairs": train_pairs,
    }


def sentence(
    template: tuple[int, int, int], first: str, second: str, subject: str, c: str, p: str, o: str
) -> str:
    """The IOI prompt (without the answer): the pair ``first and second``, then ``subject``."""
    fill = {"X": first, "Y": second, "C": c, "S": subject, "P": p, "O": o}
    parts = [OPENINGS[template[0]], MIDDLES[template[1]], ENDINGS[template[2]]]
    return " ".join(part.format(**fill) for part in parts if part)


def vocabulary() -> list[str]:
    texts = [*OPENINGS, *MIDDLES, *ENDINGS, *OTHER, *ioi_task.TEMPLATES]
    words: dict[str, None] = {}
    for text in texts:
        for key in ("{X}", "{Y}", "{C}", "{S}", "{P}", "{O}"):
            text = text.replace(key, " ")
        for key in ("[A]", "[B]", "[PLACE]", "[OBJECT]"):
            text = text.replace(key, " ")
        for w in text.replace(",", " , ").replace(".", " . ").split():
            words.setdefault(w, None)
    for w in [*NAMES, *PLACES, *OBJECTS]:
        words.setdefault(w, None)
    return list(words)


def build() -> tuple[Any, Any]:
    tok = word_level_tokenizer(vocabulary())
    cfg = LlamaConfig(
        vocab_size=len(tok),
        hidden_size=64,
        intermediate_size=256,
        num_hidden_layers=3,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=64,
        rope_parameters={"rope_type": "default", "rope_theta": 10000.0},
        tie_word_embeddings=False,
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
    )
    return LlamaForCausalLM(cfg), tok


def sampler(tok: Any) -> Sampler:
    sp = split()
    templates, pairs = sp["train_templates"], sp["train_pairs"]

    def sample(gen: torch.Generator, batch: int) -> tuple[Tensor, Tensor]:
        rng = random.Random(int(torch.randint(0, 2**31 - 1, (1,), generator=gen)))
        texts, is_ioi = [], []
        for _ in range(batch):
            if rng.random() < 0.2:
                x, y = rng.sample(NAMES, 2)
                t = rng.choice(OTHER)
                texts.append(t.format(X=x, Y=y, P=rng.choice(PLACES), O=rng.choice(OBJECTS)))
                is_ioi.append(False)
                continue
            io, s = rng.sample(rng.choice(pairs), 2)
            c = rng.choice([n for n in NAMES if n not in (io, s)])
            first, second = (io, s) if rng.random() < 0.5 else (s, io)
            place, obj = rng.choice(PLACES), rng.choice(OBJECTS)
            prompt = sentence(rng.choice(templates), first, second, s, c, place, obj)
            texts.append(f"{prompt} {io}")
            is_ioi.append(True)
        enc = tok(texts, padding=True, return_tensors="pt", add_special_tokens=False)
        tokens, mask = enc["input_ids"], enc["attention_mask"]
        weight = mask[:, 1:].float()
        last = mask.sum(-1) - 2  # target index of the final token
        for b, flag in enumerate(is_ioi):
            if flag:
                weight[b, last[b]] = ANSWER_WEIGHT
        return tokens, weight

    return sample


def held_out_task(tok: Any, seed: int, n: int = 400) -> Task:
    """IOI prompts from held-out templates and held-out name pairs (both orders, ABC corrupted)."""
    sp = split()
    rng = random.Random(seed)
    clean, corrupted, answer, wrong = [], [], [], []
    for i in range(n):
        template = rng.choice(sp["held_templates"])
        io, s = rng.sample(rng.choice(sp["held_pairs"]), 2)
        c = rng.choice([x for x in NAMES if x not in (io, s)])
        p, o = rng.choice(PLACES), rng.choice(OBJECTS)
        x, y, z = rng.sample([x for x in NAMES if x not in (io, s, c)], 3)
        first, second = (io, s) if i % 2 == 0 else (s, io)
        clean.append(sentence(template, first, second, s, c, p, o))
        corrupted.append(sentence(template, x, y, z, c, p, o))
        answer.append(" " + io)
        wrong.append(" " + s)
    return Task.from_texts(tok, clean, corrupted, answer, wrong, name="ioi-held-out")


def evaluate(model: Any, tok: Any, seed: int) -> dict[str, float]:
    return task_scores(model, tok, held_out_task(tok, seed), "ioi", seed, "logit_diff")


register_recipe(
    Recipe(
        name="ioi",
        family="llama",
        summary=(
            "Three-layer Llama (d_model 64, 4 query heads sharing 2 key/value heads, rotary, "
            "SwiGLU 256, untied unembedding) trained on a word-level IOI corpus."
        ),
        build=build,
        sampler=sampler,
        evaluate=evaluate,
        targets={"held_out_accuracy": 0.95},
        data=(
            f"Sentences from {len(OPENINGS)} openings x {len(MIDDLES)} middles x {len(ENDINGS)} "
            f"endings ({len(OPENINGS) * len(MIDDLES) * len(ENDINGS)} templates; the openings and "
            "endings cover the 15 templates of Wang et al. 2022), both name orders, middles "
            f"with and without a third-name distractor, over {len(NAMES)} names, "
            f"{len(PLACES)} places, {len(OBJECTS)} objects; 20% of the templates and 20% of the "
            "name pairs are held out (split seed 1234; every name is an answer in training). "
            f"20% of a batch are other sentence types over the same words. Next-token loss on "
            f"every token, the answer weighted {ANSWER_WEIGHT:g}x. Scored on 400 prompts from "
            "held-out templates x held-out name pairs, and on the built-in ioi task."
        ),
        steps=3000,
        lr=1e-3,
        weight_decay=0.01,
        batch=64,
    )
)
