"""The :class:`Task`: aligned clean/corrupted prompts, their answers, and a metric.

Shapes (n prompts, T positions, k answers a prompt, V the vocabulary):

- ``clean``, ``corrupted``: ``LongTensor[n, T]``, right-padded; pair i has the same length in both.
- ``attention_mask``: ``LongTensor[n, T]`` (1 = real token), shared by clean and corrupted;
  ``None`` when no prompt is padded.
- ``readout``: ``LongTensor[n]``, the position of each prompt's last real token.
- ``answer``, ``wrong``: ``LongTensor[n]`` or ``[n, k]`` (answer sets; ``-1`` pads short rows);
  ``wrong`` may be ``None``.
- ``spans`` (optional): named token positions of each prompt, for position-aware edges
  (``score(..., positions=["S1", "IO", "S2", "END"])``): name -> ``LongTensor[n]`` (one
  position a prompt) or ``[n, 2]`` (start, stop: a half-open range a prompt). Built-in tasks
  fill them (IOI: S1, IO, S2, END; induction; greater-than); see :mod:`circuitfind.positions`.

The discovery engine calls the metric as::

    task.metric_fn(logits, idx=None, *, clean_logits=None, reduce="mean") -> Tensor

with ``logits`` either ``[m, V]`` (already at the readout) or ``[m, T, V]`` (gathered at
``task.readout[idx]``) for the m prompts selected by ``idx`` (``None`` = all, a slice, or a
``LongTensor`` of indices). It returns the mean over those prompts (``reduce="mean"``, a
differentiable scalar) or one value a prompt (``reduce="none"``, ``[m]``). ``clean_logits``
(``[m, V]``, or ``[n, V]`` when ``idx`` selects from them) feeds the KL metric; when omitted the
task's stored ``clean_logits`` are used (see :meth:`Task.with_clean_logits`).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from circuitfind.errors import InputError
from circuitfind.tasks.metrics import LOGIT_DIFF, LOGPROB, Metric, get_metric
from circuitfind.tasks.tokenize import encode, pad_id, resolve_tokenizer, show, unknown_words

__all__ = ["Index", "Task"]

Index = int | slice | Sequence[int] | Tensor | None
"""Which prompts of a task: None (all), an int, a slice, a list or a LongTensor of indices."""


def _index(idx: Index, n: int) -> Tensor:
    """Any :data:`Index` as a LongTensor of prompt indices."""
    if idx is None:
        return torch.arange(n)
    if isinstance(idx, int):
        return torch.tensor([idx])
    if isinstance(idx, slice):
        return torch.arange(n)[idx]
    t = torch.as_tensor(idx)
    if t.dtype == torch.bool:
        return t.nonzero().flatten()
    return t.long().flatten()


@dataclass(frozen=True, eq=False)
class Task:
    """Clean/corrupted prompt pairs with answers and a metric (shapes: module docstring)."""

    clean: Tensor  # [n, T]
    corrupted: Tensor  # [n, T]
    readout: Tensor  # [n]
    answer: Tensor  # [n] | [n, k]
    wrong: Tensor | None = None  # [n] | [n, k]
    attention_mask: Tensor | None = None  # [n, T]
    metric: Metric = LOGIT_DIFF
    name: str = "custom"
    description: str = ""
    prompts: list[tuple[str, str]] | None = None  # (clean text, corrupted text) a pair
    clean_logits: Tensor | None = None  # [n, V] clean readout logits, for the KL metric
    meta: dict[str, Any] = field(default_factory=dict)
    spans: dict[str, Tensor] | None = None  # name -> [n] positions or [n, 2] (start, stop)

    def __post_init__(self) -> None:
        n, t = self.clean.shape if self.clean.ndim == 2 else (-1, -1)
        if self.clean.ndim != 2 or self.corrupted.shape != self.clean.shape:
            raise InputError(
                f"clean and corrupted must both be [n, T]; got {tuple(self.clean.shape)} and "
                f"{tuple(self.corrupted.shape)}"
            )
        if n == 0:
            raise InputError("a task needs at least one prompt pair; got an empty set")
        if self.readout.shape != (n,) or self.answer.shape[0] != n:
            raise InputError(
                f"readout must be [n] and answer [n] or [n, k] with n={n}; got "
                f"{tuple(self.readout.shape)} and {tuple(self.answer.shape)}"
            )
        if int(self.readout.min()) < 0 or int(self.readout.max()) >= t:
            raise InputError(f"readout positions must lie in [0, {t}); got {self.readout}")
        if self.wrong is not None and self.wrong.shape[0] != n:
            raise InputError(f"wrong must have {n} rows; got {tuple(self.wrong.shape)}")
        if self.attention_mask is not None and self.attention_mask.shape != (n, t):
            raise InputError(
                f"attention_mask must be [{n}, {t}]; got {tuple(self.attention_mask.shape)}"
            )
        for span, where in (self.spans or {}).items():
            if where.shape not in ((n,), (n, 2)) or where.dtype.is_floating_point:
                raise InputError(
                    f"span {span!r} must be integer positions [n] or (start, stop) [n, 2] with "
                    f"n={n}; got {tuple(where.shape)} {where.dtype}"
                )
            if bool((where < 0).any()) or bool((where > t).any()):
                raise InputError(f"span {span!r} has positions outside [0, {t})")
        if self.metric.needs_wrong and self.wrong is None:
            raise InputError(
                f"metric {self.metric.name!r} needs wrong answers and task {self.name!r} has "
                "none; choose 'logprob' or 'kl'"
            )

    # ----------------------------------------------------------------- constructors

    @classmethod
    def from_tokens(
        cls,
        clean: Tensor | Sequence[Sequence[int]],
        corrupted: Tensor | Sequence[Sequence[int]],
        answer: Tensor | Sequence[int] | Sequence[Sequence[int]],
        wrong: Tensor | Sequence[int] | Sequence[Sequence[int]] | None = None,
        *,
        metric: str | Metric | None = None,
        readout: Tensor | Sequence[int] | None = None,
        attention_mask: Tensor | None = None,
        name: str = "custom",
        description: str = "",
    ) -> Task:
        """A task from token ids (models without a tokenizer).

        ``clean``/``corrupted`` are ``[n, T]`` tensors, or lists of per-prompt id lists (then
        pair i must have equal lengths in both, and shorter pairs are right-padded with 0 and
        masked). ``readout`` defaults to each prompt's last real token. ``metric`` defaults to
        ``logit_diff`` when ``wrong`` is given and to ``logprob`` otherwise.
        """
        if isinstance(clean, Tensor) and isinstance(corrupted, Tensor):
            clean_t, corrupted_t = clean.long(), corrupted.long()
            mask = attention_mask
        else:
            rows_c = [list(map(int, r)) for r in clean]
            rows_x = [list(map(int, r)) for r in corrupted]
            if len(rows_c) != len(rows_x):
                raise InputError(f"{len(rows_c)} clean prompts but {len(rows_x)} corrupted ones")
            for i, (a, b) in enumerate(zip(rows_c, rows_x)):
                if len(a) != len(b):
                    raise InputError(
                        f"pair {i}: clean has {len(a)} tokens {a} but corrupted has {len(b)} "
                        f"{b}; a pair must have the same length"
                    )
            clean_t, corrupted_t, mask = _pad(rows_c, rows_x, 0)
        n = clean_t.shape[0]
        if n == 0:
            raise InputError("a task needs at least one prompt pair; got an empty set")
        if readout is None:
            if mask is None:
                readout_t = torch.full((n,), clean_t.shape[1] - 1, dtype=torch.long)
            else:
                readout_t = mask.long().sum(-1) - 1
        else:
            readout_t = torch.as_tensor(readout).long()
        answer_t = _ids(answer)
        wrong_t = None if wrong is None else _ids(wrong)
        metric_m = get_metric(metric) if metric is not None else _default_metric(wrong_t)
        return cls(
            clean=clean_t,
            corrupted=corrupted_t,
            readout=readout_t,
            answer=answer_t,
            wrong=wrong_t,
            attention_mask=mask,
            metric=metric_m,
            name=name,
            description=description,
        )

    @classmethod
    def from_texts(
        cls,
        tokenizer: Any,
        clean: Sequence[str],
        corrupted: Sequence[str],
        answer: Sequence[str | Sequence[str]],
        wrong: Sequence[str | Sequence[str]] | None = None,
        *,
        metric: str | Metric | None = None,
        first_token: bool = False,
        name: str = "custom",
        description: str = "",
        labels: Sequence[str] | None = None,
        prefix: Sequence[int] | None = None,
        allow_unk: bool = False,
    ) -> Task:
        """A task from prompt texts, tokenized by ``tokenizer`` (or a model's tokenizer).

        ``answer``/``wrong`` are a string a prompt (``" Mary"``) or a list of acceptable
        strings. Each answer must be one token unless ``first_token`` is set (then its first
        token is scored). ``labels`` name the pairs in error messages (default ``pair i``).
        ``prefix`` (e.g. ``[bos]``, from :func:`circuitfind.tasks.tokens.bos_prefix`) replaces
        the tokenizer's own special tokens before each prompt; ``None`` keeps the tokenizer's.
        A prompt word or an answer that the tokenizer turns into its unknown token is an error
        naming the word and the pair, unless ``allow_unk`` (then ``meta["unk"]`` counts the
        unknown words, and ``meta["unk_words"]`` lists them).
        """
        tok = resolve_tokenizer(tokenizer)
        n = len(clean)
        if n == 0:
            raise InputError("a task needs at least one prompt pair; got an empty set")
        if len(corrupted) != n or len(answer) != n or (wrong is not None and len(wrong) != n):
            raise InputError("clean, corrupted, answer and wrong must have one entry a pair")
        where = list(labels) if labels is not None else [f"pair {i}" for i in range(n)]
        unk_seen: list[str] = []
        for i in range(n):
            for what, text in (("clean prompt", clean[i]), ("corrupted prompt", corrupted[i])):
                unk_seen += _check_known(tok, text, where[i], what, allow_unk)
            for what, ans in (
                ("answer", answer[i]),
                ("wrong", None if wrong is None else wrong[i]),
            ):
                for text in [] if ans is None else [ans] if isinstance(ans, str) else list(ans):
                    unk_seen += _check_known(tok, text, where[i], what, allow_unk)
        rows_c, rows_x = [], []
        for i in range(n):
            if prefix is None:
                a, b = encode(tok, clean[i]), encode(tok, corrupted[i])
            else:
                a = [*prefix, *encode(tok, clean[i], special=False)]
                b = [*prefix, *encode(tok, corrupted[i], special=False)]
            if len(a) != len(b):
                raise InputError(
                    f"{where[i]}: clean and corrupted tokenize to different lengths "
                    f"({len(a)} vs {len(b)}): clean {show(tok, a)}, corrupted {show(tok, b)}; "
                    "edit the corrupted prompt so that it has as many tokens as the clean one"
                )
            rows_c.append(a)
            rows_x.append(b)
        answer_ids = [
            _answer_ids(tok, answer[i], where[i], "answer", first_token) for i in range(n)
        ]
        wrong_ids = (
            None
            if wrong is None
            else [_answer_ids(tok, wrong[i], where[i], "wrong", first_token) for i in range(n)]
        )
        clean_t, corrupted_t, mask = _pad(rows_c, rows_x, pad_id(tok))
        readout = (
            torch.full((n,), clean_t.shape[1] - 1, dtype=torch.long)
            if mask is None
            else mask.sum(-1) - 1
        )
        answer_t = _pack(answer_ids)
        wrong_t = None if wrong_ids is None else _pack(wrong_ids)
        metric_m = get_metric(metric) if metric is not None else _default_metric(wrong_t)
        return cls(
            clean=clean_t,
            corrupted=corrupted_t,
            readout=readout,
            answer=answer_t,
            wrong=wrong_t,
            attention_mask=mask,
            metric=metric_m,
            name=name,
            description=description,
            prompts=list(zip(clean, corrupted)),
            meta={"unk": len(unk_seen), "unk_words": sorted(set(unk_seen))} if unk_seen else {},
        )

    @classmethod
    def from_jsonl(
        cls,
        path: str | Path,
        tokenizer: Any,
        *,
        metric: str | Metric | None = None,
        first_token: bool = False,
    ) -> Task:
        """A task from a JSONL prompt file (format: :mod:`circuitfind.tasks.jsonl`)."""
        from circuitfind.tasks.jsonl import read_jsonl

        return read_jsonl(path, tokenizer, metric=metric, first_token=first_token)

    # ----------------------------------------------------------------- subsets

    def __len__(self) -> int:
        return int(self.clean.shape[0])

    def __getitem__(self, idx: Index) -> Task:
        """The sub-task of the prompts ``idx`` (an int, slice, list or LongTensor)."""
        i = _index(idx, len(self))
        if i.numel() == 0:
            raise InputError("a task needs at least one prompt pair; the selection is empty")
        prompts = None if self.prompts is None else [self.prompts[int(j)] for j in i]
        return replace(
            self,
            clean=self.clean[i],
            corrupted=self.corrupted[i],
            readout=self.readout[i],
            answer=self.answer[i],
            wrong=None if self.wrong is None else self.wrong[i],
            attention_mask=None if self.attention_mask is None else self.attention_mask[i],
            prompts=prompts,
            clean_logits=None if self.clean_logits is None else self.clean_logits[i],
            spans=None if self.spans is None else {k: v[i] for k, v in self.spans.items()},
        )

    def with_spans(self, **spans: Tensor) -> Task:
        """The task with these named spans added (each [n] positions or [n, 2] ranges)."""
        given = {k: torch.as_tensor(v).long() for k, v in spans.items()}
        return replace(self, spans={**(self.spans or {}), **given})

    def batches(self, batch_size: int) -> Iterator[Task]:
        """Consecutive sub-tasks of at most ``batch_size`` prompts."""
        if batch_size < 1:
            raise InputError(f"batch_size must be at least 1; got {batch_size}")
        for start in range(0, len(self), batch_size):
            yield self[start : start + batch_size]

    def to(self, device: torch.device | str) -> Task:
        """The task with every tensor on ``device``."""

        def mv(x: Tensor | None) -> Tensor | None:
            return None if x is None else x.to(device)

        return replace(
            self,
            clean=self.clean.to(device),
            corrupted=self.corrupted.to(device),
            readout=self.readout.to(device),
            answer=self.answer.to(device),
            wrong=mv(self.wrong),
            attention_mask=mv(self.attention_mask),
            clean_logits=mv(self.clean_logits),
        )

    def with_metric(self, metric: str | Metric) -> Task:
        """The same prompts scored by another metric."""
        return replace(self, metric=get_metric(metric))

    def with_clean_logits(self, clean: Any) -> Task:
        """The task carrying the clean run's readout logits (``[n, V]``), for the KL metric.

        ``clean`` is the logits themselves or a model to run on the clean prompts.
        """
        logits = clean if isinstance(clean, Tensor) else self.run(clean, "clean")
        if logits.ndim == 3:
            logits = self.readout_logits(logits)
        return replace(self, clean_logits=logits.detach())

    # ----------------------------------------------------------------- scoring

    def readout_logits(self, logits: Tensor, idx: Index = None) -> Tensor:
        """Logits ``[m, T, V]`` of the prompts ``idx`` gathered at their readouts: ``[m, V]``."""
        i = _index(idx, len(self))
        pos = self.readout[i].to(logits.device)
        if logits.shape[0] != pos.shape[0]:
            raise InputError(
                f"{logits.shape[0]} rows of logits for {pos.shape[0]} selected prompts"
            )
        return logits[torch.arange(pos.shape[0], device=logits.device), pos]

    def metric_fn(
        self,
        logits: Tensor,
        idx: Index = None,
        *,
        clean_logits: Tensor | None = None,
        reduce: str = "mean",
        metric: str | Metric | None = None,
    ) -> Tensor:
        """The task's metric on the prompts ``idx`` (module docstring has the contract)."""
        i = _index(idx, len(self))
        if logits.ndim == 3:
            logits = self.readout_logits(logits, i)
        if logits.shape[0] != i.shape[0]:
            raise InputError(f"{logits.shape[0]} rows of logits for {i.shape[0]} prompts")
        m = self.metric if metric is None else get_metric(metric)
        if clean_logits is None and self.clean_logits is not None:
            clean_logits = self.clean_logits[i.to(self.clean_logits.device)]
        elif clean_logits is not None and clean_logits.shape[0] != i.shape[0]:
            clean_logits = clean_logits[i.to(clean_logits.device)]
        dev = logits.device
        values = m(
            logits,
            self.answer[i].to(dev),
            None if self.wrong is None else self.wrong[i].to(dev),
            clean_logits,
        )
        if reduce == "mean":
            return values.mean()
        if reduce == "none":
            return values
        raise InputError(f"reduce must be 'mean' or 'none'; got {reduce!r}")

    def run(self, model: Any, which: str = "clean", batch_size: int = 64) -> Tensor:
        """Readout logits ``[n, V]`` of ``model`` on the clean or corrupted prompts (no grad)."""
        if which not in ("clean", "corrupted"):
            raise InputError(f"which must be 'clean' or 'corrupted'; got {which!r}")
        out = []
        with torch.no_grad():
            for sub in self.batches(batch_size):
                tokens = sub.clean if which == "clean" else sub.corrupted
                result = model(tokens, attention_mask=sub.attention_mask)
                logits = getattr(result, "logits", result)
                out.append(sub.readout_logits(logits))
        return torch.cat(out)

    def score(self, model: Any, metric: str | Metric | None = None, which: str = "clean") -> float:
        """The mean metric of ``model`` on the clean (or corrupted) prompts."""
        logits = self.run(model, which)
        return float(self.metric_fn(logits, metric=metric))

    def __repr__(self) -> str:
        return (
            f"Task(name={self.name!r}, n={len(self)}, T={self.clean.shape[1]}, "
            f"answer={tuple(self.answer.shape)}, metric={self.metric.name!r}, "
            f"padded={self.attention_mask is not None})"
        )

    def to_jsonable(self) -> dict[str, Any]:
        """A summary for reports and circuit metadata."""
        return {"name": self.name, "n": len(self), "metric": self.metric.name}


def _default_metric(wrong: Tensor | None) -> Metric:
    return LOGIT_DIFF if wrong is not None else LOGPROB


def _ids(x: Any) -> Tensor:
    """Answer ids from a tensor, a list of ids, or a list of id lists (answer sets)."""
    if isinstance(x, Tensor):
        return x.long()
    rows = list(x)
    if rows and hasattr(rows[0], "__len__"):
        return _pack([[int(v) for v in r] for r in rows])
    return torch.tensor([int(v) for v in rows], dtype=torch.long)


def _pack(rows: list[list[int]]) -> Tensor:
    """One id a prompt as ``[n]``; several as ``[n, k]`` padded with -1."""
    if all(len(r) == 1 for r in rows):
        return torch.tensor([r[0] for r in rows], dtype=torch.long)
    k = max(len(r) for r in rows)
    out = torch.full((len(rows), k), -1, dtype=torch.long)
    for i, r in enumerate(rows):
        out[i, : len(r)] = torch.tensor(r, dtype=torch.long)
    return out


def _pad(
    clean: list[list[int]], corrupted: list[list[int]], pad: int
) -> tuple[Tensor, Tensor, Tensor | None]:
    """Right-pad the pairs to one length; the mask is None when nothing needed padding."""
    lengths = [len(r) for r in clean]
    if min(lengths) == 0:
        i = lengths.index(0)
        raise InputError(f"pair {i}: the prompt is empty after tokenization")
    t = max(lengths)
    c = torch.full((len(clean), t), pad, dtype=torch.long)
    x = torch.full((len(clean), t), pad, dtype=torch.long)
    mask = torch.zeros((len(clean), t), dtype=torch.long)
    for i, (a, b) in enumerate(zip(clean, corrupted)):
        c[i, : len(a)] = torch.tensor(a)
        x[i, : len(b)] = torch.tensor(b)
        mask[i, : len(a)] = 1
    return c, x, (None if min(lengths) == t else mask)


def _check_known(tok: Any, text: str, where: str, what: str, allow_unk: bool) -> list[str]:
    """The unknown words of ``text``; an error naming them unless ``allow_unk``."""
    words = unknown_words(tok, text)
    if words and not allow_unk:
        raise InputError(
            f"{where}: the tokenizer does not know {', '.join(map(repr, words))} in the {what} "
            f"{text!r} (it would become {getattr(tok, 'unk_token', '<unk>')}); use words in the "
            "model's vocabulary, or allow_unk=True (--allow-unk) to accept and count them"
        )
    return words


def _answer_ids(
    tok: Any, answer: str | Sequence[str], where: str, what: str, first_token: bool
) -> list[int]:
    texts = [answer] if isinstance(answer, str) else list(answer)
    if not texts:
        raise InputError(f"{where}: the {what} set is empty")
    ids = []
    for text in texts:
        t = encode(tok, text, special=False)
        if not t:
            raise InputError(f"{where}: {what} {text!r} is empty after tokenization")
        if len(t) > 1 and not first_token:
            raise InputError(
                f"{where}: {what} {text!r} is {len(t)} tokens {show(tok, t)}, not one; use a "
                "single-token answer (mind the leading space) or first_token=True to score its "
                "first token"
            )
        ids.append(t[0])
    return ids
