"""Any task to and from JSONL: circuitfind's own columns, token ids, and MIB's column names.

:func:`export_jsonl` writes one pair a line: ``{"clean", "corrupted", "answer", "wrong"}`` (the
format of :mod:`circuitfind.tasks.jsonl`) when the task has its prompt texts and a tokenizer
that gives the answer ids back, otherwise ``{"clean_ids", "corrupted_ids", "answer_ids",
"wrong_ids"}`` (token ids; answer sets as lists, ``-1`` padding dropped).

:func:`import_jsonl` reads either, and rows in the shape of MIB's datasets (Mueller et al.
2025; their circuit-track loader's columns):

- ``prompt``: the clean prompt; the corrupted prompt is ``row[COUNTERFACTUAL]["prompt"]``,
  where ``COUNTERFACTUAL`` is a column ending in ``_counterfactual`` (``counterfactual=`` names
  it; by default MIB's: ``symbol_counterfactual`` (MCQA), ``s2_io_flip_counterfactual`` (IOI),
  ``random_counterfactual`` (arithmetic), or the only such column);
- the answer: `` {metadata.indirect_object}`` where there is IOI metadata (wrong: ``
  {metadata.subject}``); else ``choices["label"][answerKey]`` (or ``choices[answerKey]``); else
  ``str(label)``; the wrong answer is the counterfactual's answer by the same rule;
- EAP-IG's ``clean``/``corrupted`` with ``correct_idx``/``incorrect_idx`` (token ids) too.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from circuitfind.errors import InputError
from circuitfind.tasks.base import Task
from circuitfind.tasks.metrics import Metric
from circuitfind.tasks.tokenize import encode, resolve_tokenizer
from circuitfind.tasks.tokens import bos_prefix

__all__ = ["MIB_COUNTERFACTUALS", "export_jsonl", "import_jsonl"]

MIB_COUNTERFACTUALS = (
    "symbol_counterfactual",
    "s2_io_flip_counterfactual",
    "random_counterfactual",
)
_OWN = {"clean", "corrupted", "answer", "wrong"}


def _answer_text(tok: Any, token_id: int) -> str:
    """The text of one answer token that encodes back to it (SentencePiece decoders may drop a
    leading space, so `` X`` is tried too)."""
    text = tok.decode([token_id])
    for candidate in (text, " " + text):
        if encode(tok, candidate, special=False) == [token_id]:
            return candidate
    raise ValueError(token_id)


def _ids(row: Any) -> list[int]:
    return [int(v) for v in row.tolist() if int(v) >= 0] if row.ndim else [int(row)]


def export_jsonl(task: Task, path: str | Path, tokenizer: Any = None) -> str:
    """Write ``task`` as JSONL (format: module docstring); returns ``"text"`` or ``"ids"``."""
    tok = resolve_tokenizer(tokenizer, required=False) if tokenizer is not None else None
    rows: list[dict[str, Any]] = []
    mode = "text" if task.prompts is not None and tok is not None else "ids"
    if mode == "text":
        assert task.prompts is not None
        try:
            for i, (clean, corrupted) in enumerate(task.prompts):
                row: dict[str, Any] = {"clean": clean, "corrupted": corrupted}
                for key, ids in (("answer", task.answer), ("wrong", task.wrong)):
                    if ids is None:
                        continue
                    texts = [_answer_text(tok, t) for t in _ids(ids[i])]
                    row[key] = texts[0] if ids.ndim == 1 else texts
                rows.append(row)
        except ValueError:
            mode, rows = "ids", []
    if mode == "ids":
        for i in range(len(task)):
            length = int(task.readout[i]) + 1 if task.attention_mask is not None else None
            row = {
                "clean_ids": task.clean[i, :length].tolist(),
                "corrupted_ids": task.corrupted[i, :length].tolist(),
                "answer_ids": _ids(task.answer[i]),
            }
            if task.wrong is not None:
                row["wrong_ids"] = _ids(task.wrong[i])
            rows.append(row)
    Path(path).write_text(
        "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8"
    )
    return mode


def _rows(path: Path) -> list[tuple[int, dict[str, Any]]]:
    if not path.is_file():
        raise InputError(f"prompt file {str(path)!r} does not exist")
    try:
        text = path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as exc:
        bad = path.read_bytes()[: exc.start].count(b"\n") + 1
        raise InputError(f"{path.name} line {bad}: not valid UTF-8") from None
    out = []
    for lineno, raw in enumerate(text.splitlines(), start=1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            raise InputError(f"{path.name} line {lineno}: not valid JSON ({exc.msg})") from None
        if not isinstance(row, dict):
            raise InputError(f"{path.name} line {lineno}: expected a JSON object")
        out.append((lineno, row))
    if not out:
        raise InputError(f"prompt file {str(path)!r} has no prompt pairs")
    return out


def _mib_answer(row: dict[str, Any], where: str) -> str:
    choices, key = row.get("choices"), row.get("answerKey")
    if choices is not None and key is not None:
        labels: Any = choices.get("label") if isinstance(choices, dict) else choices
        try:
            return str(labels[int(key)])
        except (IndexError, TypeError, ValueError, KeyError):
            raise InputError(f"{where}: answerKey {key!r} does not index choices") from None
    if "label" in row:
        return str(row["label"])
    raise InputError(f"{where}: no answer (expected choices + answerKey, or label)")


def _counterfactual(row: dict[str, Any], name: str | None, where: str) -> dict[str, Any]:
    present = sorted(k for k in row if k.endswith("_counterfactual"))
    if name is None:
        name = next((c for c in MIB_COUNTERFACTUALS if c in row), None)
        if name is None and len(present) == 1:
            name = present[0]
    if name is None or not isinstance(row.get(name), dict):
        raise InputError(
            f"{where}: choose the corrupted prompt with counterfactual=NAME; this row has "
            f"{', '.join(present) or 'no *_counterfactual column'}"
        )
    return row[name]


def import_jsonl(
    path: str | Path,
    source: Any,
    *,
    counterfactual: str | None = None,
    metric: str | Metric | None = None,
    first_token: bool = False,
    allow_unk: bool = False,
    add_bos: bool | None = None,
) -> Task:
    """A task from a JSONL file of circuitfind, token-id, MIB or EAP-IG rows (module docstring).

    ``source`` is a model or tokenizer (token-id rows need neither). ``add_bos`` (None: the
    tokenizer's own special tokens) puts BOS first by the rule of
    :func:`circuitfind.tasks.tokens.bos_prefix`.
    """
    path = Path(path)
    rows = _rows(path)
    keys = set(rows[0][1])
    if "clean_ids" in keys or "correct_idx" in keys:
        texts = isinstance(rows[0][1].get("clean"), str)
        return _from_ids(path, rows, metric, resolve_tokenizer(source) if texts else None)
    tok = resolve_tokenizer(source)
    if keys <= _OWN and add_bos is None:
        from circuitfind.tasks.jsonl import read_jsonl

        return read_jsonl(path, tok, metric=metric, first_token=first_token, allow_unk=allow_unk)
    clean, corrupted, answer, wrong, labels = [], [], [], [], []
    for lineno, row in rows:
        where = f"{path.name} line {lineno}"
        if set(row) <= _OWN:
            c, x, a, w = row.get("clean"), row.get("corrupted"), row.get("answer"), row.get("wrong")
        else:
            if "prompt" not in row:
                raise InputError(
                    f"{where}: expected clean/corrupted/answer (circuitfind), prompt + "
                    "*_counterfactual (MIB) or clean_ids/correct_idx (token ids)"
                )
            cf = _counterfactual(row, counterfactual, where)
            c, x = row["prompt"], cf.get("prompt")
            meta = row.get("metadata") or {}
            if isinstance(meta, dict) and "indirect_object" in meta and "subject" in meta:
                a, w = " " + str(meta["indirect_object"]), " " + str(meta["subject"])
            else:
                a, w = _mib_answer(row, where), _mib_answer(cf, where + " (counterfactual)")
        if not isinstance(c, str) or not isinstance(x, str) or a is None:
            raise InputError(f"{where}: clean and corrupted prompts and an answer are required")
        clean.append(c)
        corrupted.append(x)
        answer.append(a)
        wrong.append(w)
        labels.append(where)
    with_wrong = all(w is not None for w in wrong)
    return Task.from_texts(
        tok,
        clean,
        corrupted,
        answer,
        wrong if with_wrong else None,  # type: ignore[arg-type]
        metric=metric,
        first_token=first_token,
        name=path.stem,
        description=f"prompt pairs from {path.name}",
        labels=labels,
        prefix=None if add_bos is None else bos_prefix(source, tok, add_bos=add_bos),
        allow_unk=allow_unk,
    )


def _from_ids(
    path: Path, rows: list[tuple[int, dict[str, Any]]], metric: Any, tok: Any = None
) -> Task:
    clean, corrupted, answer, wrong = [], [], [], []
    for lineno, row in rows:
        where = f"{path.name} line {lineno}"
        try:
            if "clean_ids" in row:
                clean.append([int(v) for v in row["clean_ids"]])
                corrupted.append([int(v) for v in row["corrupted_ids"]])
                answer.append([int(v) for v in row["answer_ids"]])
                if "wrong_ids" in row:
                    wrong.append([int(v) for v in row["wrong_ids"]])
            else:  # EAP-IG: prompt texts (or id lists) and the answers' token ids
                for key, out in (("clean", clean), ("corrupted", corrupted)):
                    value = row[key]
                    out.append(encode(tok, value) if tok is not None else [int(v) for v in value])
                answer.append([int(row["correct_idx"])])
                if "incorrect_idx" in row:
                    wrong.append([int(row["incorrect_idx"])])
        except (KeyError, TypeError, ValueError) as exc:
            raise InputError(f"{where}: token-id rows need integer lists ({exc})") from None
    if wrong and len(wrong) != len(answer):
        raise InputError(f"{path.name}: give wrong ids on every line or on none")
    task = Task.from_tokens(
        clean,
        corrupted,
        answer,
        wrong or None,
        metric=metric,
        name=path.stem,
        description=f"token-id pairs from {path.name}",
    )
    return task
