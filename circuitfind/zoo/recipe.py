"""The zoo's recipe types and their registry: what a zoo model is built, trained and scored by.

A recipe module (``circuitfind/zoo/induction_2l.py``, ...) imports this module and calls
``register_recipe(Recipe(...))``; the trainer (``circuitfind.zoo.train``) reads ``get_recipe``.
Neither imports the other.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from circuitfind.errors import InputError

__all__ = [
    "BUILTIN_RECIPES",
    "RECIPES",
    "Consolidation",
    "Recipe",
    "Sampler",
    "get_recipe",
    "load_builtin_recipes",
    "register_recipe",
    "task_scores",
]

Sampler = Callable[[torch.Generator, int], tuple[Tensor, Tensor]]
"""``sample(gen, batch) -> (tokens [batch, T], loss_weight [batch, T-1])``: one training batch;
``loss_weight[:, i]`` weights the loss of predicting ``tokens[:, i + 1]`` (0 = no loss)."""


@dataclass(frozen=True)
class Consolidation:
    """A second phase after the main training: ``steps`` more steps at a constant ``lr`` (fresh
    AdamW) with ``weight * penalty(model)`` added to the loss, e.g. a sparsity penalty that
    concentrates a redundant circuit in as few heads as possible."""

    steps: int
    lr: float
    weight: float
    penalty: Callable[[Any], Tensor]
    description: str


@dataclass(frozen=True)
class Recipe:
    """How one zoo model is built, trained and scored."""

    name: str
    family: str
    summary: str
    build: Callable[[], tuple[Any, Any]]  # () -> (model, tokenizer); seeded by the caller
    sampler: Callable[[Any], Sampler]  # tokenizer -> sampler
    evaluate: Callable[[Any, Any, int], dict[str, float]]  # (model, tokenizer, seed) -> scores
    targets: dict[str, float]  # score name -> minimum the shipped model must reach
    data: str  # the data recipe, for the card
    steps: int
    quick_steps: int = 30
    lr: float = 1e-3
    weight_decay: float = 0.01
    batch: int = 64
    warmup: int = 100
    shipped_seed: int = 0
    consolidation: Consolidation | None = None
    extra: dict[str, Any] = field(default_factory=dict)


RECIPES: dict[str, Recipe] = {}


def register_recipe(recipe: Recipe) -> None:
    """Add a zoo recipe; names are unique."""
    if recipe.name in RECIPES:
        raise ValueError(f"zoo recipe {recipe.name!r} is already registered")
    RECIPES[recipe.name] = recipe


def get_recipe(name: str) -> Recipe:
    """The recipe NAME (``induction-2l``, ``ioi``, ``greater-than``)."""
    load_builtin_recipes()
    if name not in RECIPES:
        raise InputError(f"no zoo recipe {name!r}; recipes: {', '.join(sorted(RECIPES))}")
    return RECIPES[name]


BUILTIN_RECIPES: tuple[str, ...] = (
    "circuitfind.zoo.induction_2l",
    "circuitfind.zoo.ioi",
    "circuitfind.zoo.greater_than",
    "circuitfind.zoo.agreement",
    "circuitfind.zoo.docstring",
)
"""The modules whose import registers the shipped recipes (imported by name, when first needed:
they import this module, so this module does not import them)."""


def load_builtin_recipes() -> None:
    """Import the shipped recipe modules (each registers its recipe)."""
    for module in BUILTIN_RECIPES:
        importlib.import_module(module)


def task_scores(
    model: Any, tok: Any, held: Any, builtin: str, seed: int, metric: str
) -> dict[str, float]:
    """Accuracy and ``metric`` on a recipe's held-out task and on the built-in task ``builtin``
    (400 prompts drawn with ``seed``), keyed ``held_out_*`` and ``builtin_<name>_*``."""
    from circuitfind.tasks import get_task

    key = builtin.replace("-", "_")
    logits = held.run(model)
    task = get_task(builtin, tok, n=400, seed=seed)
    b_logits = task.run(model)
    return {
        "held_out_accuracy": float(held.metric_fn(logits, metric="accuracy")),
        f"held_out_{metric}": float(held.metric_fn(logits)),
        f"builtin_{key}_accuracy": float(task.metric_fn(b_logits, metric="accuracy")),
        f"builtin_{key}_{metric}": float(task.metric_fn(b_logits)),
    }
