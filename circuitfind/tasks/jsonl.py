"""Custom prompt sets as JSONL: one clean/corrupted pair a line.

Format (one JSON object a line; blank lines and lines starting with ``#`` are skipped)::

    {"clean": "When Mary and John went to the store, John gave a drink to",
     "corrupted": "When Alice and Bob went to the store, Carl gave a drink to",
     "answer": " Mary", "wrong": " John"}

- ``clean``, ``corrupted`` (required): prompt texts that tokenize to the same number of tokens;
- ``answer`` (required): the correct next token as text (mind the leading space), or a list of
  acceptable answers;
- ``wrong`` (optional): the wrong answer (or a list). Give it on every line or on none: with it
  the default metric is ``logit_diff``; without it ``logprob`` (or choose ``kl``).

Each answer must be a single token unless ``first_token=True`` (then its first token counts).
The file must be UTF-8 (a byte-order mark is accepted); ``wrong`` must differ from ``answer``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from circuitfind.errors import InputError
from circuitfind.tasks.base import Task
from circuitfind.tasks.metrics import Metric

__all__ = ["FORMAT", "read_jsonl"]

FORMAT = __doc__ or ""


def _lines(path: Path) -> list[tuple[int, str]]:
    """(line number, stripped text) of each line, decoded as UTF-8 one line at a time, so a
    bad byte is reported by its line; a UTF-8 byte-order mark at the start is dropped."""
    raw = path.read_bytes()
    if raw.startswith(b"\xef\xbb\xbf"):
        raw = raw[3:]
    out = []
    for lineno, chunk in enumerate(raw.splitlines(), start=1):
        try:
            text = chunk.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise InputError(
                f"{path.name} line {lineno}: not UTF-8 text (byte 0x{chunk[exc.start]:02x} at "
                f"column {exc.start + 1}); save the file as UTF-8"
            ) from None
        out.append((lineno, text.strip()))
    return out


def _as_set(value: Any) -> frozenset[str]:
    return frozenset([value] if isinstance(value, str) else value)


def read_jsonl(
    path: str | Path,
    tokenizer: Any,
    *,
    metric: str | Metric | None = None,
    first_token: bool = False,
    allow_unk: bool = False,
) -> Task:
    """Read a JSONL prompt file into a :class:`Task` (tokenized with ``tokenizer``); an unknown
    word is an error naming its line unless ``allow_unk`` (see :meth:`Task.from_texts`)."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"prompt file {str(path)!r} does not exist")
    clean: list[str] = []
    corrupted: list[str] = []
    answer: list[Any] = []
    wrong: list[Any] = []
    labels: list[str] = []
    with_wrong: bool | None = None
    for lineno, line in _lines(path):
        if not line or line.startswith("#"):
            continue
        where = f"{path.name} line {lineno}"
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            raise InputError(
                f"{where}: not valid JSON ({exc.msg}); each line must be one object like "
                '{"clean": "...", "corrupted": "...", "answer": " X", "wrong": " Y"}'
            ) from None
        if not isinstance(row, dict):
            raise InputError(f"{where}: expected a JSON object, got {type(row).__name__}")
        missing = [k for k in ("clean", "corrupted", "answer") if k not in row]
        if missing:
            raise InputError(f"{where}: missing field(s) {', '.join(missing)}")
        unknown = sorted(set(row) - {"clean", "corrupted", "answer", "wrong"})
        if unknown:
            raise InputError(
                f"{where}: unknown field(s) {', '.join(unknown)}; "
                "allowed: clean, corrupted, answer, wrong"
            )
        for key in ("clean", "corrupted"):
            if not isinstance(row[key], str) or not row[key]:
                raise InputError(f"{where}: {key!r} must be a non-empty string")
        for key in ("answer", "wrong"):
            value = row.get(key)
            ok = isinstance(value, str) or (
                isinstance(value, list) and value and all(isinstance(v, str) for v in value)
            )
            if key in row and not ok:
                raise InputError(f"{where}: {key!r} must be a string or a list of strings")
        has_wrong = "wrong" in row
        if has_wrong and _as_set(row["wrong"]) == _as_set(row["answer"]):
            raise InputError(
                f"{where}: 'wrong' equals 'answer' ({row['answer']!r}), so the logit difference "
                "is 0 whatever the model does; give a different wrong answer"
            )
        if with_wrong is None:
            with_wrong = has_wrong
        elif with_wrong != has_wrong:
            raise InputError(
                f"{where}: 'wrong' is {'given' if has_wrong else 'missing'} here but "
                f"{'missing' if has_wrong else 'given'} on earlier lines; give it on all or none"
            )
        clean.append(row["clean"])
        corrupted.append(row["corrupted"])
        answer.append(row["answer"])
        wrong.append(row.get("wrong"))
        labels.append(where)
    if not clean:
        raise InputError(f"prompt file {str(path)!r} has no prompt pairs")
    return Task.from_texts(
        tokenizer,
        clean,
        corrupted,
        answer,
        wrong if with_wrong else None,
        metric=metric,
        first_token=first_token,
        name=path.stem,
        description=f"prompt pairs from {path.name}",
        labels=labels,
        allow_unk=allow_unk,
    )
