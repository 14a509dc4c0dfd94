"""Gendered pronoun (Mathwin et al. 2023, "Identifying a preliminary circuit for predicting
gendered pronouns in GPT-2 small").

Clean prompt: ``"So Mary is a really great friend, isn't"`` -> `` she`` (`` he`` for a male
name), from a few templates of that shape (a name, then a tag question whose pronoun refers to
it). Wrong answer: the other pronoun. Metric: logit difference, correct minus other pronoun.
Corrupted distribution: the same template with a name of the other gender, which flips the
answer. Names are drawn from those that are one token after a space for the tokenizer.
"""

from __future__ import annotations

from typing import Any

from circuitfind.errors import InputError
from circuitfind.tasks.base import Task
from circuitfind.tasks.build import Row, build_task, draw_rows, single_token_words
from circuitfind.tasks.metrics import Metric
from circuitfind.tasks.tokenize import resolve_tokenizer

__all__ = ["FEMALE", "MALE", "TEMPLATES", "gendered_pronoun"]

TEMPLATES: list[str] = [
    "So {name} is a really great friend, isn't",
    "So {name} is such a good cook, isn't",
    "Then {name} was a very kind teacher, wasn't",
    "Well, {name} is a really nice person, isn't",
    "So {name} is always late to work, isn't",
]

FEMALE: list[str] = [
    "Mary", "Alice", "Sarah", "Emma", "Anna", "Laura", "Kate", "Lisa", "Jane", "Rose", "Amy",
    "Emily", "Helen", "Julia", "Lucy", "Grace", "Claire", "Rachel", "Diana", "Linda", "Susan",
    "Karen", "Nancy", "Jessica", "Nicole", "Megan", "Rebecca", "Victoria", "Martha", "Ruth",
]  # fmt: skip
MALE: list[str] = [
    "John", "Bob", "Tom", "James", "David", "Michael", "Paul", "Mark", "Peter", "George",
    "Daniel", "Steven", "Kevin", "Brian", "Jack", "Adam", "Ryan", "Eric", "Andrew", "Scott",
    "Richard", "Robert", "William", "Thomas", "Joseph", "Charles", "Jason", "Frank", "Henry",
    "Carl",
]  # fmt: skip


def gendered_pronoun(
    source: Any,
    *,
    n: int = 64,
    seed: int = 0,
    templates: list[str] | None = None,
    metric: str | Metric | None = None,
    add_bos: bool | None = None,
    allow_unk: bool = False,
) -> Task:
    """Gendered-pronoun prompt pairs, half female and half male. Deterministic for a seed."""
    tok = resolve_tokenizer(source)
    if n < 1:
        raise InputError(f"n must be at least 1; got {n}")
    female, drop_f = single_token_words(tok, FEMALE, what="female names")
    male, drop_m = single_token_words(tok, MALE, what="male names")
    single_token_words(tok, ["she", "he"], what="pronouns")
    templates = templates or TEMPLATES

    def make(rng: Any, i: int) -> Row:
        template = rng.choice(templates)
        fem = i % 2 == 0
        name, other = (rng.choice(female), rng.choice(male))
        if not fem:
            name, other = other, name
        right, wrong = (" she", " he") if fem else (" he", " she")
        return template.format(name=name), template.format(name=other), right, wrong

    return build_task(
        source,
        tok,
        draw_rows(make, n, seed),
        n=n,
        name="gendered-pronoun",
        description="gendered pronoun (Mathwin et al. 2023), other-gender name corruption",
        metric=metric or "logit_diff",
        add_bos=add_bos,
        allow_unk=allow_unk,
        meta={"dropped_names": drop_f + drop_m},
    )
