"""Tasks: aligned clean/corrupted prompts, answers and a metric (see :mod:`.base` for shapes).

Built-ins (``get_task(name, model)``, one module each, its docstring naming its source, metric
and corrupted distribution): ``ioi``, ``induction``, ``greater-than``, ``docstring``,
``gendered-pronoun``, ``agreement``, ``mcqa``, ``arithmetic``, ``factual``, ``sentiment``. A
path to a ``.jsonl`` file reads a prompt set: circuitfind's format
(:mod:`circuitfind.tasks.jsonl`), token ids, or MIB's columns (:mod:`circuitfind.tasks.exchange`,
which also exports any task).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from circuitfind.errors import InputError
from circuitfind.tasks.agreement import agreement as _agreement
from circuitfind.tasks.arithmetic import arithmetic as _arithmetic
from circuitfind.tasks.base import Index, Task
from circuitfind.tasks.docstring import docstring as _docstring
from circuitfind.tasks.exchange import export_jsonl, import_jsonl
from circuitfind.tasks.factual import factual as _factual
from circuitfind.tasks.gendered_pronoun import gendered_pronoun as _gendered_pronoun
from circuitfind.tasks.greater_than import greater_than as _greater_than
from circuitfind.tasks.induction import induction as _induction
from circuitfind.tasks.ioi import ioi as _ioi
from circuitfind.tasks.mcqa import mcqa as _mcqa
from circuitfind.tasks.metrics import METRICS, Metric, get_metric
from circuitfind.tasks.sentiment import sentiment as _sentiment

__all__ = [
    "METRICS",
    "TASKS",
    "Index",
    "Metric",
    "Task",
    "TaskSpec",
    "export_jsonl",
    "get_metric",
    "get_task",
    "import_jsonl",
    "register_task",
]


@dataclass(frozen=True)
class TaskSpec:
    """A built-in task: its generator ``build(source, *, n, seed, metric, **kwargs) -> Task``."""

    name: str
    build: Callable[..., Task]
    metric: str
    summary: str
    source: str = ""  # the paper (or benchmark) that defines it


TASKS: dict[str, TaskSpec] = {}


def register_task(spec: TaskSpec) -> None:
    """Add a built-in task; names are unique."""
    if spec.name in TASKS:
        raise ValueError(f"task {spec.name!r} is already registered")
    TASKS[spec.name] = spec


for _spec in [
    TaskSpec(
        "ioi",
        _ioi,
        "logit_diff",
        "indirect object identification, 15 templates, ABBA+BABA, ABC corruption",
        "Wang et al. 2022",
    ),
    TaskSpec(
        "induction",
        _induction,
        "logprob",
        "random tokens then their repeat; corrupted: a fresh second half",
        "Olsson et al. 2022",
    ),
    TaskSpec(
        "greater-than",
        _greater_than,
        "prob_diff",
        "'from the year 17YY to the year 17' -> years above YY; corrupted YY=01",
        "Hanna et al. 2023",
    ),
    TaskSpec(
        "docstring",
        _docstring,
        "logit_diff",
        "Python docstring ':param' -> the next argument; corrupted: random argument names",
        "Heimersheim & Janiak 2023",
    ),
    TaskSpec(
        "gendered-pronoun",
        _gendered_pronoun,
        "logit_diff",
        "'So Mary is a great friend, isn't' -> ' she'; corrupted: other-gender name",
        "Mathwin et al. 2023",
    ),
    TaskSpec(
        "agreement",
        _agreement,
        "logit_diff",
        "'The author near the guards' -> singular verb; corrupted: subject number swapped",
        "Finlayson et al. 2021",
    ),
    TaskSpec(
        "mcqa",
        _mcqa,
        "logit_diff",
        "colour question with options A-D -> the letter; corrupted: letters/options moved",
        "MIB (Mueller et al. 2025)",
    ),
    TaskSpec(
        "arithmetic",
        _arithmetic,
        "logit_diff",
        "'23+45=' -> '68' (operator='-' subtracts); corrupted: random operands",
        "MIB (Mueller et al. 2025)",
    ),
    TaskSpec(
        "factual",
        _factual,
        "logit_diff",
        "'Paris is the capital of' -> ' France'; corrupted: another capital",
        "Meng et al. 2022 (capital-country recall)",
    ),
    TaskSpec(
        "sentiment",
        _sentiment,
        "logit_diff",
        "movie review -> ' great'/' terrible'; corrupted: opposite-sentiment words",
        "Tigges et al. 2023",
    ),
]:
    register_task(_spec)
_ALIASES = {
    "greater_than": "greater-than",
    "greaterthan": "greater-than",
    "gt": "greater-than",
    "gendered_pronoun": "gendered-pronoun",
    "pronoun": "gendered-pronoun",
    "sva": "agreement",
    "subject-verb-agreement": "agreement",
    "factual-recall": "factual",
    "capitals": "factual",
}


def get_task(
    name_or_path: str | Path,
    model: Any,
    *,
    n: int = 64,
    seed: int = 0,
    metric: str | Metric | None = None,
    **kwargs: Any,
) -> Task:
    """A built-in task (a name in :data:`TASKS`) or a JSONL prompt file.

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
        return import_jsonl(path, model, metric=metric, **kwargs)
    raise InputError(
        f"unknown task {key!r}: use one of {', '.join(TASKS)} or a path to a .jsonl file "
        "(see `circuitfind tasks`)"
    )
