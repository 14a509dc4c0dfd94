"""Docstring (Heimersheim & Janiak 2023, "A circuit for Python docstrings in a 4-layer
attention-only transformer"; the docstring task of ACDC, Conmy et al. 2023).

Clean prompt: a Python function whose docstring documents its first arguments, ending at the
``:param`` of the next one::

    def port(self, load, size, files, last):
        \"\"\"oil column piece

        :param load: crime population
        :param size: unit dark
        :param

Answer: the next argument's name (`` files``). Wrong set: the function's other argument names
(the paper's metric takes the largest wrong logit; here ``logit_diff`` takes their mean).
Corrupted distribution (the paper's variants; default ``random_random``, as ACDC): the
argument names in the ``def`` line and in the docstring replaced by fresh random words
(``random_def``: only the ``def`` line's; ``random_doc``: only the docstring's), so nothing in
the prompt says which name comes next. Words are drawn from single-token ones for the tokenizer.
"""

from __future__ import annotations

from typing import Any

from circuitfind.errors import InputError
from circuitfind.tasks.base import Task
from circuitfind.tasks.build import Row, build_task, draw_rows, single_token_words
from circuitfind.tasks.metrics import Metric
from circuitfind.tasks.tokenize import resolve_tokenizer

__all__ = ["CORRUPTIONS", "WORDS", "docstring"]

CORRUPTIONS = ("random_random", "random_def", "random_doc")

WORDS: list[str] = [
    "load", "size", "files", "last", "port", "crime", "population", "unit", "dark", "oil",
    "column", "piece", "image", "user", "data", "name", "value", "key", "type", "path", "line",
    "text", "model", "state", "target", "source", "result", "node", "order", "mode", "shape",
    "color", "count", "index", "label", "field", "token", "group", "block", "frame", "layer",
    "point", "price", "table", "query", "event", "level", "limit", "range", "scale", "step",
    "time", "width", "height", "input", "output", "weight", "length", "number", "parent",
    "child", "content", "context", "message", "request", "response", "server", "client",
]  # fmt: skip


def _prompt(fn: str, args: list[str], doc_args: list[str], desc: list[str], k: int) -> str:
    lines = [f"def {fn}(self, {', '.join(args)}):", f'    """{desc[0]} {desc[1]} {desc[2]}', ""]
    for j in range(k):
        lines.append(f"    :param {doc_args[j]}: {desc[3 + 2 * j]} {desc[4 + 2 * j]}")
    lines.append("    :param")
    return "\n".join(lines)


def docstring(
    source: Any,
    *,
    n: int = 64,
    seed: int = 0,
    n_args: int = 4,
    corruption: str = "random_random",
    words: list[str] | None = None,
    metric: str | Metric | None = None,
    add_bos: bool | None = None,
    allow_unk: bool = False,
) -> Task:
    """Docstring prompt pairs: ``n_args`` arguments, the first ``n_args - 2`` documented, the
    answer the next one. Deterministic for a seed."""
    tok = resolve_tokenizer(source)
    if corruption not in CORRUPTIONS:
        raise InputError(f"corruption must be one of {', '.join(CORRUPTIONS)}; got {corruption!r}")
    if n < 1 or n_args < 3:
        raise InputError(f"n must be at least 1 and n_args at least 3; got {n}, {n_args}")
    pool, dropped = single_token_words(tok, words or WORDS, what="docstring words", need=20)
    k = n_args - 2  # documented before the answer

    def make(rng: Any, _i: int) -> Row:
        picked = rng.sample(pool, 1 + n_args + 3 + 2 * k + n_args)
        fn, args = picked[0], picked[1 : 1 + n_args]
        desc = picked[1 + n_args : 1 + n_args + 3 + 2 * k]
        fresh = picked[1 + n_args + 3 + 2 * k :]
        clean = _prompt(fn, args, args, desc, k)
        def_args = fresh if corruption in ("random_random", "random_def") else args
        doc_args = fresh if corruption in ("random_random", "random_doc") else args
        corrupted = _prompt(fn, def_args, doc_args, desc, k)
        wrong = [" " + a for j, a in enumerate(args) if j != k]
        return clean, corrupted, " " + args[k], wrong

    return build_task(
        source,
        tok,
        draw_rows(make, n, seed),
        n=n,
        name="docstring",
        description=f"docstring (Heimersheim & Janiak 2023), {corruption} corruption",
        metric=metric or "logit_diff",
        add_bos=add_bos,
        allow_unk=allow_unk,
        meta={"dropped_words": dropped, "corruption": corruption},
    )
