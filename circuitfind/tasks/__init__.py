"""Tasks: aligned clean/corrupted prompts, answers and a metric (see :mod:`.base` for shapes).

Built-ins (``get_task(name, model)``): ``ioi``, ``induction``, ``greater-than`` (generators in
the modules of those names); a path to a ``.jsonl`` file reads a custom prompt set (format in
:mod:`circuitfind.tasks.jsonl`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from circuitfind.errors import InputError
from circuitfind.tasks.base import Index, Task
from circuitfind.tasks.greater_than import greater_than as _greater_than
from circuitfind.tasks.induction import induction as _induction
from circuitfind.tasks.ioi import ioi as _ioi
from circuitfind.tasks.jsonl import read_jsonl
from circuitfind.tasks.metrics import METRICS, Metric, get_metric

__all__ = [
    "METRICS",
    "TASKS",
    "Index",
    "Metric",
    "Task",
    "TaskSpec",
    "get_metric",
    "get_task",
    "register_task",
]


@dataclass(frozen=True)
class TaskSpec:
    """A built-in task: its generator ``build(source, *, n, seed, metric, **kwargs) -> Task``."""

    name: str
    build: Callable[..., Task]
    metric: str
    summary: str


TASKS: dict[str, TaskSpec] = {}


def register_task(spec: TaskSpec) -> None:
    """Add a built-in task; names are unique."""
    if spec.name in TASKS:
        raise ValueError(f"task {spec.name!r} is already registered")
    TASKS[spec.name] = spec


register_task(
    TaskSpec(
        "ioi",
        _ioi,
        "logit_diff",
        "indirect object identification, 15 templates, ABBA+BABA, ABC corruption",
    )
)
register_task(
    TaskSpec(
        "induction",
        _induction,
        "logprob",
        "random tokens then their repeat; corrupted: a fresh second half",
    )
)
register_task(
    TaskSpec(
        "greater-than",
        _greater_than,
        "prob_diff",
        "'from the year 17YY to the year 17' -> years above YY; corrupted YY=01",
    )
)
_ALIASES = {"greater_than": "greater-than", "greaterthan": "greater-than", "gt": "greater-than"}


def get_task(
    name_or_path: str | Path,
    model: Any,
    *,
    n: int = 64,
    seed: int = 0,
    metric: str | Metric | None = None,
    **kwargs: Any,
) -> Task:
    """A built-in task (``ioi``, ``induction``, ``greater-than``) or a JSONL prompt file.

    Args:
        name_or_path: a built-in name or a path to a ``.jsonl`` file.
        model: a circuitfind Model, any object with ``.tokenizer``, or a tokenizer.
        n: number of prompt pairs (built-ins only; a file gives all its lines).
        seed: the generator's seed (built-ins are deterministic per seed).
        metric: override the task's default metric (``logit_diff``, ``logprob``, ``prob_diff``,
            ``kl``, ``accuracy``).
        **kwargs: passed to the generator (``length=`` for induction, ``names=`` for ioi, ...).
    """
    key = str(name_or_path)
    spec = TASKS.get(_ALIASES.get(key.lower(), key.lower()))
    if spec is not None:
        task = spec.build(model, n=n, seed=seed, metric=metric, **kwargs)
        task.meta.setdefault("seed", seed)  # circuits found on it record the prompts' seed
        return task
    path = Path(key)
    if path.suffix == ".jsonl" or path.is_file():
        from circuitfind.tasks.tokenize import resolve_tokenizer

        return read_jsonl(path, resolve_tokenizer(model), metric=metric, **kwargs)
    raise InputError(
        f"unknown task {key!r}: use one of {', '.join(TASKS)} or a path to a .jsonl file "
        "(see `circuitfind tasks`)"
    )
