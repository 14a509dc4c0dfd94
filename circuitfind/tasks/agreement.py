"""Subject–verb agreement (Finlayson et al. 2021, "Causal analysis of syntactic agreement
mechanisms in neural language models"; the task of Marks et al. 2024's feature circuits).

Clean prompt: a subject noun, optionally followed by an attractor, ending where the verb comes:

- ``simple``: ``"The author"``;
- ``across_pp`` (across a prepositional phrase): ``"The author near the guards"``;
- ``across_rc`` (across an object relative clause): ``"The author that the guards like"``.

Answer: the verb form that agrees with the subject (`` laughs``); wrong: the other form
(`` laugh``). Metric: logit difference, agreeing minus disagreeing form. Corrupted distribution
(Finlayson et al.'s number swap): the same prompt with the subject's number flipped
(``"The authors ..."``), which swaps which verb form is correct. Nouns and verbs are kept where
both forms are one token after a space.
"""

from __future__ import annotations

from typing import Any

from circuitfind.errors import InputError
from circuitfind.tasks.base import Task
from circuitfind.tasks.build import Row, build_task, draw_rows
from circuitfind.tasks.metrics import Metric
from circuitfind.tasks.tokenize import is_single_token, resolve_tokenizer

__all__ = ["NOUNS", "STRUCTURES", "VERBS", "agreement"]

STRUCTURES = ("simple", "across_pp", "across_rc")

NOUNS: list[tuple[str, str]] = [
    ("author", "authors"), ("pilot", "pilots"), ("surgeon", "surgeons"), ("farmer", "farmers"),
    ("manager", "managers"), ("customer", "customers"), ("officer", "officers"),
    ("teacher", "teachers"), ("senator", "senators"), ("doctor", "doctors"),
    ("student", "students"), ("guard", "guards"), ("girl", "girls"), ("boy", "boys"),
    ("king", "kings"), ("dog", "dogs"), ("friend", "friends"), ("player", "players"),
    ("writer", "writers"), ("driver", "drivers"), ("lawyer", "lawyers"), ("artist", "artists"),
]  # fmt: skip
VERBS: list[tuple[str, str]] = [  # (singular, plural)
    ("is", "are"), ("was", "were"), ("has", "have"), ("likes", "like"), ("knows", "know"),
    ("says", "say"), ("thinks", "think"), ("wants", "want"), ("laughs", "laugh"),
    ("smiles", "smile"), ("writes", "write"), ("sings", "sing"), ("runs", "run"),
    ("works", "work"), ("lives", "live"), ("seems", "seem"),
]  # fmt: skip
_PREPS = ["near", "behind", "beside", "with"]
_RC_VERBS = ["like", "hate", "love", "know", "see", "admire"]  # plural-subject forms


def _pairs(tok: Any, pairs: list[tuple[str, str]]) -> tuple[list[tuple[str, str]], list[str]]:
    kept = [
        p for p in pairs if is_single_token(tok, " " + p[0]) and is_single_token(tok, " " + p[1])
    ]
    return kept, [f"{a}/{b}" for a, b in pairs if (a, b) not in kept]


def agreement(
    source: Any,
    *,
    n: int = 64,
    seed: int = 0,
    structure: str = "across_pp",
    metric: str | Metric | None = None,
    add_bos: bool | None = None,
    allow_unk: bool = False,
) -> Task:
    """Agreement prompt pairs of one ``structure`` (``simple``, ``across_pp``, ``across_rc``),
    half with singular and half with plural subjects. Deterministic for a seed."""
    tok = resolve_tokenizer(source)
    if structure not in STRUCTURES:
        raise InputError(f"structure must be one of {', '.join(STRUCTURES)}; got {structure!r}")
    if n < 1:
        raise InputError(f"n must be at least 1; got {n}")
    nouns, drop_n = _pairs(tok, NOUNS)
    verbs, drop_v = _pairs(tok, VERBS)
    if len(nouns) < 2 or not verbs:
        raise InputError(
            f"this tokenizer keeps too few noun/verb pairs whole ({len(nouns)} nouns, "
            f"{len(verbs)} verbs); dropped: {', '.join(drop_n + drop_v)}"
        )

    def make(rng: Any, i: int) -> Row:
        (sg, pl), (asg, apl) = rng.sample(nouns, 2)
        vs, vp = rng.choice(verbs)
        plural = i % 2 == 1
        attractor = rng.choice([asg, apl])

        def prompt(subject: str) -> str:
            if structure == "simple":
                return f"The {subject}"
            if structure == "across_pp":
                return f"The {subject} {rng_prep} the {attractor}"
            verb = rc_verb if attractor == apl else rc_verb + "s"
            return f"The {subject} that the {attractor} {verb}"

        rng_prep, rc_verb = rng.choice(_PREPS), rng.choice(_RC_VERBS)
        subj, flipped = (pl, sg) if plural else (sg, pl)
        right, wrong = (" " + vp, " " + vs) if plural else (" " + vs, " " + vp)
        return prompt(subj), prompt(flipped), right, wrong

    return build_task(
        source,
        tok,
        draw_rows(make, n, seed),
        n=n,
        name="agreement",
        description=f"subject-verb agreement (Finlayson et al. 2021), {structure}, number swap",
        metric=metric or "logit_diff",
        add_bos=add_bos,
        allow_unk=allow_unk,
        meta={"dropped_words": drop_n + drop_v, "structure": structure},
    )
