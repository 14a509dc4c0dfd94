"""Factual recall, capital -> country (in the style of the factual-association tasks of Meng et
al. 2022, "Locating and editing factual associations in GPT", and Geva et al. 2023).

Clean prompt: ``"Paris is the capital of"`` -> `` France`` (a few templates of that kind).
Wrong answer: the corrupted prompt's country. Metric: logit difference, the clean capital's
country minus the corrupted capital's. Corrupted distribution: the same template with another
capital of as many tokens (the subject swap used for causal tracing with a counterfactual
subject), which changes the answer. Countries must be one token after a space for the
tokenizer; capitals may be several tokens.
"""

from __future__ import annotations

from typing import Any

from circuitfind.errors import InputError
from circuitfind.tasks.base import Task
from circuitfind.tasks.build import Row, build_task, draw_rows
from circuitfind.tasks.metrics import Metric
from circuitfind.tasks.tokenize import is_single_token, resolve_tokenizer

__all__ = ["CAPITALS", "TEMPLATES", "factual"]

TEMPLATES: list[str] = [
    "{capital} is the capital of",
    "The city of {capital} is the capital of",
    "{capital} is the capital city of",
]

CAPITALS: list[tuple[str, str]] = [
    ("Paris", "France"), ("Berlin", "Germany"), ("Rome", "Italy"), ("Madrid", "Spain"),
    ("Tokyo", "Japan"), ("Moscow", "Russia"), ("Beijing", "China"), ("Cairo", "Egypt"),
    ("Athens", "Greece"), ("Lisbon", "Portugal"), ("Dublin", "Ireland"), ("Ottawa", "Canada"),
    ("Canberra", "Australia"), ("Vienna", "Austria"), ("Warsaw", "Poland"),
    ("Stockholm", "Sweden"), ("Oslo", "Norway"), ("Helsinki", "Finland"),
    ("Copenhagen", "Denmark"), ("Brussels", "Belgium"), ("Budapest", "Hungary"),
    ("Ankara", "Turkey"), ("Tehran", "Iran"), ("Baghdad", "Iraq"), ("Nairobi", "Kenya"),
    ("Lima", "Peru"), ("Santiago", "Chile"), ("Havana", "Cuba"), ("Hanoi", "Vietnam"),
    ("Bangkok", "Thailand"), ("Manila", "Philippines"), ("Jakarta", "Indonesia"),
    ("Kabul", "Afghanistan"), ("Brasilia", "Brazil"), ("London", "England"),
    ("Seoul", "Korea"), ("Amsterdam", "Netherlands"), ("Bern", "Switzerland"),
]  # fmt: skip


def factual(
    source: Any,
    *,
    n: int = 64,
    seed: int = 0,
    templates: list[str] | None = None,
    metric: str | Metric | None = None,
    add_bos: bool | None = None,
    allow_unk: bool = False,
) -> Task:
    """Capital -> country prompt pairs. Deterministic for a seed."""
    tok = resolve_tokenizer(source)
    if n < 1:
        raise InputError(f"n must be at least 1; got {n}")
    pairs = [(c, k) for c, k in CAPITALS if is_single_token(tok, " " + k)]
    dropped = [k for c, k in CAPITALS if (c, k) not in pairs]
    if len(pairs) < 2:
        raise InputError(f"this tokenizer keeps fewer than two countries whole: {dropped}")
    templates = templates or TEMPLATES

    def make(rng: Any, _i: int) -> Row:
        template = rng.choice(templates)
        (cap, country), (cap2, country2) = rng.sample(pairs, 2)
        return (
            template.format(capital=cap),
            template.format(capital=cap2),
            " " + country,
            " " + country2,
        )

    return build_task(
        source,
        tok,
        draw_rows(make, n, seed, factor=8),
        n=n,
        name="factual",
        description="capital -> country factual recall, counterfactual-capital corruption",
        metric=metric or "logit_diff",
        add_bos=add_bos,
        allow_unk=allow_unk,
        meta={"dropped_countries": dropped},
    )
