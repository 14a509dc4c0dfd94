"""Arithmetic, as in MIB (Mueller et al. 2025): two-operand addition or subtraction.

Clean prompt: ``"23+45="`` -> ``68`` (``"57-21="`` -> ``36``). Metric: logit difference, the
clean result's token minus the corrupted result's (MIB's metric). Corrupted distribution (MIB's
``random_counterfactual``): the same operator with fresh random operands of the same digit
counts, whose result differs. As MIB does, only pairs whose clean and corrupted results are one
token each are kept. For tokenizers that write numbers as whole tokens (GPT-2: up to about 3
digits, Llama-3: up to 3) operands have two digits; for those that split digits one by one
(Gemma, Qwen, Llama-2), a single-token result is a single digit, so operands are one digit
(addition: results 0-9; subtraction: results 0-9 from two-digit operands). ``task.meta``
records the operand range used. Tokenizers that put a space marker before every text (the
Llama-2 SentencePiece style: ``"4"`` -> ``▁`` ``4``) have no one-token bare number and are
refused with a message.
"""

from __future__ import annotations

from typing import Any

from circuitfind.errors import InputError
from circuitfind.tasks.base import Task
from circuitfind.tasks.build import Row, build_task
from circuitfind.tasks.metrics import Metric
from circuitfind.tasks.tokenize import encode, is_single_token, resolve_tokenizer

__all__ = ["OPERATORS", "arithmetic"]

OPERATORS = ("+", "-")


def arithmetic(
    source: Any,
    *,
    n: int = 64,
    seed: int = 0,
    operator: str = "+",
    metric: str | Metric | None = None,
    add_bos: bool | None = None,
    allow_unk: bool = False,
) -> Task:
    """Arithmetic prompt pairs for ``operator`` (``+`` or ``-``). Deterministic for a seed."""
    import random

    tok = resolve_tokenizer(source)
    if operator not in OPERATORS:
        raise InputError(f"operator must be '+' or '-'; got {operator!r}")
    if n < 1:
        raise InputError(f"n must be at least 1; got {n}")
    whole = all(is_single_token(tok, str(v)) for v in range(10, 100))
    # operand ranges: two digits where numbers are whole tokens; else results must be one digit
    if whole:
        lo, hi = 10, 99
    elif operator == "+":
        lo, hi = 0, 9
    else:
        lo, hi = 10, 99  # differences of two-digit numbers that lie in 0..9

    def result(a: int, b: int) -> int:
        return a + b if operator == "+" else a - b

    def ok(a: int, b: int) -> bool:
        r = result(a, b)
        return r >= 0 and is_single_token(tok, str(r))

    def operands(rng: random.Random) -> tuple[int, int]:
        for _ in range(10_000):
            a, b = rng.randint(lo, hi), rng.randint(lo, hi)
            if ok(a, b):
                return a, b
        raise InputError(
            f"no operands in {lo}..{hi} give a result that is one token for {operator!r} with "
            f"this tokenizer ('4' is {len(encode(tok, '4', special=False))} tokens; tokenizers "
            "that prefix every text with a space marker, like Llama-2's, cannot score a bare "
            "number as one token)"
        )

    rng = random.Random(seed)
    rows: list[Row] = []
    for _ in range(4 * n + 8):
        a, b = operands(rng)
        while True:
            c, d = operands(rng)
            if result(c, d) != result(a, b):
                break
        rows.append(
            (f"{a}{operator}{b}=", f"{c}{operator}{d}=", str(result(a, b)), str(result(c, d)))
        )
    word = "addition" if operator == "+" else "subtraction"
    return build_task(
        source,
        tok,
        rows,
        n=n,
        name="arithmetic",
        description=f"two-operand {word} (MIB), random counterfactual operands",
        metric=metric or "logit_diff",
        add_bos=add_bos,
        allow_unk=allow_unk,
        meta={"operator": operator, "operand_range": [lo, hi]},
    )
