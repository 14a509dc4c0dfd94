"""Indirect object identification (Wang et al. 2022): "When Mary and John went to the store,
John gave a drink to" -> " Mary".

Clean prompts use the 15 templates of the paper in both name orders (ABBA and BABA); the
corrupted prompt is the same template and place/object with three other, distinct names (the
"ABC" distribution), so it carries no information about which name is the indirect object.
Metric: logit difference, indirect object (answer) minus subject (wrong).
"""

from __future__ import annotations

import logging
import random
from typing import Any

from circuitfind.errors import InputError
from circuitfind.tasks.base import Task
from circuitfind.tasks.metrics import Metric
from circuitfind.tasks.spans import ioi_spans
from circuitfind.tasks.tokenize import encode, is_single_token, resolve_tokenizer, show
from circuitfind.tasks.tokens import bos_prefix

__all__ = ["NAMES", "OBJECTS", "PLACES", "TEMPLATES", "ioi", "single_token_names"]

logger = logging.getLogger(__name__)

# The BABA templates of Wang et al. 2022 ([B] is the subject, [A] the indirect object).
TEMPLATES: list[str] = [
    "Then, [B] and [A] went to the [PLACE]. [B] gave a [OBJECT] to [A]",
    "Then, [B] and [A] had a lot of fun at the [PLACE]. [B] gave a [OBJECT] to [A]",
    "Then, [B] and [A] were working at the [PLACE]. [B] decided to give a [OBJECT] to [A]",
    "Then, [B] and [A] were thinking about going to the [PLACE]. [B] wanted to give a [OBJECT] "
    "to [A]",
    "Then, [B] and [A] had a long argument, and afterwards [B] said to [A]",
    "After [B] and [A] went to the [PLACE], [B] gave a [OBJECT] to [A]",
    "When [B] and [A] got a [OBJECT] at the [PLACE], [B] decided to give it to [A]",
    "When [B] and [A] got a [OBJECT] at the [PLACE], [B] decided to give the [OBJECT] to [A]",
    "While [B] and [A] were working at the [PLACE], [B] gave a [OBJECT] to [A]",
    "While [B] and [A] were commuting to the [PLACE], [B] gave a [OBJECT] to [A]",
    "After the lunch, [B] and [A] went to the [PLACE]. [B] gave a [OBJECT] to [A]",
    "Afterwards, [B] and [A] went to the [PLACE]. [B] gave a [OBJECT] to [A]",
    "Then, [B] and [A] had a long argument. Afterwards [B] said to [A]",
    "The [PLACE] [B] and [A] went to had a [OBJECT]. [B] gave it to [A]",
    "Friends [B] and [A] found a [OBJECT] at the [PLACE]. [B] gave it to [A]",
]

PLACES: list[str] = [
    "store", "garden", "restaurant", "school", "hospital", "office", "house", "station",
]  # fmt: skip
OBJECTS: list[str] = [
    "ring", "kiss", "bone", "basketball", "computer", "necklace", "drink", "snack",
]  # fmt: skip

# Common English first names; a tokenizer keeps those that are one token after a space.
NAMES: list[str] = [
    "Mary", "John", "Alice", "Bob", "Tom", "Sarah", "James", "Emma", "David", "Anna",
    "Michael", "Laura", "Paul", "Kate", "Mark", "Lisa", "Peter", "Jane", "George", "Rose",
    "Daniel", "Amy", "Steven", "Emily", "Chris", "Helen", "Kevin", "Julia", "Brian", "Lucy",
    "Jack", "Grace", "Adam", "Claire", "Ryan", "Alex", "Eric", "Sophie", "Sam", "Kelly",
    "Andrew", "Rachel", "Matt", "Diana", "Scott", "Anne", "Richard", "Linda", "Robert", "Susan",
    "William", "Karen", "Thomas", "Nancy", "Joseph", "Betty", "Charles", "Sandra", "Brandon",
    "Ashley", "Jason", "Jessica", "Justin", "Amanda", "Jeff", "Nicole", "Patrick", "Megan",
    "Sean", "Heather", "Tim", "Rebecca", "Jonathan", "Victoria", "Frank", "Martha", "Henry",
    "Ruth", "Carl", "Joan", "Roger", "Alan", "Louis", "Dan", "Max", "Luke", "Ben", "Leo",
    "Ian", "Jim", "Joe", "Ted", "Ray", "Ken", "Nick", "Bill", "Eva", "Kim", "Ellen", "Jay",
]  # fmt: skip


def single_token_names(tok: Any, names: list[str] | None = None) -> list[str]:
    """The names that are a single, known token after a space for ``tok``."""
    return [name for name in (names or NAMES) if is_single_token(tok, " " + name)]


def _known_words(tok: Any, words: list[str], what: str) -> list[str]:
    """Words the tokenizer knows (no UNK token) after a space."""
    unk = getattr(tok, "unk_token_id", None)
    keep = [w for w in words if unk is None or unk not in encode(tok, " " + w, special=False)]
    if not keep:
        raise InputError(f"the tokenizer knows none of the {what} {words}")
    return keep


def _fill(template: str, a: str, b: str, s2: str, place: str, obj: str) -> str:
    """The prompt text: the template up to the final name, names placed in order."""
    body = template.removesuffix("[A]").rstrip()
    body = body.replace("[PLACE]", place).replace("[OBJECT]", obj)
    # first the pair ([B] and [A]), then the repeated subject
    first, rest = body.split(" and ", 1)
    first = first.replace("[B]", b)
    rest = rest.replace("[A]", a, 1).replace("[B]", s2, 1)
    return f"{first} and {rest}"


def ioi(
    source: Any,
    *,
    n: int = 64,
    seed: int = 0,
    templates: list[str] | None = None,
    names: list[str] | None = None,
    metric: str | Metric | None = None,
    add_bos: bool | None = None,
    allow_unk: bool = False,
) -> Task:
    """IOI prompt pairs for ``source``'s tokenizer (a model with ``.tokenizer`` or a tokenizer).

    Half the prompts are ABBA, half BABA (alternating); names are drawn from the single-token
    ones: a name that is several tokens after a space is dropped, logged, and listed in
    ``task.meta["dropped_names"]``. BOS first by :func:`circuitfind.tasks.tokens.bos_prefix`
    (``add_bos`` overrides). Deterministic for a seed.
    """
    tok = resolve_tokenizer(source)
    if n < 1:
        raise InputError(f"n must be at least 1; got {n}")
    pool = single_token_names(tok, names)
    dropped = [x for x in (names or NAMES) if x not in pool]
    if dropped:
        logger.info(
            "ioi: %d of %d names are not one token after a space and are not used: %s",
            len(dropped),
            len(names or NAMES),
            ", ".join(dropped),
        )
    if len(pool) < 5:
        rejected = {x: show(tok, encode(tok, " " + x, special=False)) for x in (names or NAMES)}
        raise InputError(
            f"IOI needs at least 5 names that are one token after a space; this tokenizer has "
            f"{len(pool)} ({pool}). Tokenizations: {dict(list(rejected.items())[:8])} ...; "
            "pass names=[...] that the tokenizer keeps whole"
        )
    places = _known_words(tok, PLACES, "places")
    objects = _known_words(tok, OBJECTS, "objects")
    templates = templates or TEMPLATES
    rng = random.Random(seed)
    clean, corrupted, answer, wrong = [], [], [], []
    for i in range(n):
        template = rng.choice(templates)
        io, s, x, y, z = rng.sample(pool, 5)
        place, obj = rng.choice(places), rng.choice(objects)
        abba = i % 2 == 0
        if abba:  # "[A] and [B] ... [B] gave ... to"
            clean.append(_fill(template, b=io, a=s, s2=s, place=place, obj=obj))
        else:  # "[B] and [A] ... [B] gave ... to"
            clean.append(_fill(template, b=s, a=io, s2=s, place=place, obj=obj))
        corrupted.append(_fill(template, b=x, a=y, s2=z, place=place, obj=obj))
        answer.append(" " + io)
        wrong.append(" " + s)
    task = Task.from_texts(
        tok,
        clean,
        corrupted,
        answer,
        wrong,
        metric=metric or "logit_diff",
        name="ioi",
        description="indirect object identification (Wang et al. 2022), ABC corruption",
        prefix=bos_prefix(source, tok, add_bos=add_bos),
        allow_unk=allow_unk,
    )
    task.meta.update(names=pool, dropped_names=dropped)
    assert task.wrong is not None
    return task.with_spans(**ioi_spans(task.clean, task.answer, task.wrong, task.readout))
