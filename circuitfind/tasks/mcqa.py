"""Multiple-choice question answering (MCQA), as in MIB (Mueller et al. 2025, "MIB: a
mechanistic interpretability benchmark"): its synthetic colour-copying questions.

Clean prompt: a sentence giving an object's colour, a question about it and four lettered
options, ending at ``Answer:``::

    Question: The banana is yellow. What color is the banana?
    A. red
    B. yellow
    C. blue
    D. green
    Answer:

Answer: the correct option's letter (`` B``). Metric: logit difference, the clean prompt's
letter minus the corrupted prompt's (MIB's wrong answer is the counterfactual's answer letter).
Corrupted distribution, MIB's two counterfactuals: ``symbol`` (MIB's default,
``symbol_counterfactual``): the same options with their letters permuted so that the correct
option carries another letter; ``position`` (``answerPosition_counterfactual``): the same
letters with the options reordered so that the correct colour sits at another letter. Either
moves the answer letter and keeps the token count. The letters must be single tokens after a
space (true for every tokenizer tested).
"""

from __future__ import annotations

from typing import Any

from circuitfind.errors import InputError
from circuitfind.tasks.base import Task
from circuitfind.tasks.build import Row, build_task, draw_rows, single_token_words
from circuitfind.tasks.metrics import Metric
from circuitfind.tasks.tokenize import resolve_tokenizer

__all__ = ["COLORS", "COUNTERFACTUALS", "LETTERS", "OBJECTS", "mcqa"]

LETTERS = ("A", "B", "C", "D")
COUNTERFACTUALS = ("symbol", "position")
COLORS = ["red", "green", "blue", "yellow", "brown", "orange", "purple", "black", "white", "pink"]
OBJECTS: list[tuple[str, str]] = [
    ("banana", "yellow"), ("grass", "green"), ("strawberry", "red"), ("coconut", "brown"),
    ("sky", "blue"), ("snow", "white"), ("coal", "black"), ("cherry", "red"), ("lemon", "yellow"),
    ("carrot", "orange"), ("pumpkin", "orange"), ("eggplant", "purple"), ("plum", "purple"),
    ("flamingo", "pink"), ("crow", "black"), ("milk", "white"), ("tomato", "red"),
    ("lime", "green"), ("ocean", "blue"), ("chocolate", "brown"),
]  # fmt: skip


def _prompt(obj: str, color: str, options: list[str], letters: list[str]) -> str:
    lines = [f"Question: The {obj} is {color}. What color is the {obj}?"]
    lines += [f"{letter}. {option}" for letter, option in zip(letters, options)]
    lines.append("Answer:")
    return "\n".join(lines)


def mcqa(
    source: Any,
    *,
    n: int = 64,
    seed: int = 0,
    counterfactual: str = "symbol",
    metric: str | Metric | None = None,
    add_bos: bool | None = None,
    allow_unk: bool = False,
) -> Task:
    """MCQA prompt pairs with four options; the answer letter is uniform over A-D."""
    tok = resolve_tokenizer(source)
    if counterfactual not in COUNTERFACTUALS:
        raise InputError(
            f"counterfactual must be one of {', '.join(COUNTERFACTUALS)}; got {counterfactual!r}"
        )
    if n < 1:
        raise InputError(f"n must be at least 1; got {n}")
    single_token_words(tok, list(LETTERS), what="answer letters", need=4)

    def make(rng: Any, i: int) -> Row:
        obj, color = rng.choice(OBJECTS)
        options = [color, *rng.sample([c for c in COLORS if c != color], 3)]
        rng.shuffle(options)
        right = options.index(color)
        letters = list(LETTERS)
        clean = _prompt(obj, color, options, letters)
        if counterfactual == "symbol":
            while True:  # a permutation of the letters that moves the correct option's
                perm = rng.sample(letters, 4)
                if perm[right] != letters[right]:
                    break
            corrupted, moved = _prompt(obj, color, options, perm), perm[right]
        else:
            other = rng.choice([j for j in range(4) if j != right])
            swapped = list(options)
            swapped[right], swapped[other] = swapped[other], swapped[right]
            corrupted, moved = _prompt(obj, color, swapped, letters), letters[other]
        return clean, corrupted, " " + letters[right], " " + moved

    return build_task(
        source,
        tok,
        draw_rows(make, n, seed),
        n=n,
        name="mcqa",
        description=f"MCQA (MIB's colour questions), {counterfactual} counterfactual",
        metric=metric or "logit_diff",
        add_bos=add_bos,
        allow_unk=allow_unk,
        meta={"counterfactual": counterfactual},
    )
