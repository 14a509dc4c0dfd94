"""Training the zoo: one loop for every recipe, deterministic for a seed, writing the package files.

``train(name, seed=S, out=DIR)`` is what ``circuitfind zoo train NAME --seed S --out DIR`` runs:
it builds the recipe's model and tokenizer, trains on freshly sampled synthetic batches, scores
the model on held-out prompts, and writes ``config.json``, ``model.safetensors``,
``tokenizer.json``, ``tokenizer_config.json``, ``card.json`` and ``card.md`` to DIR.
"""

from __future__ import annotations

import json
import logging
import math
import platform
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor
from tqdm.auto import tqdm

from circuitfind.bench.common import cpu_name
from circuitfind.errors import InputError

__all__ = [
    "RECIPES",
    "Consolidation",
    "Recipe",
    "get_recipe",
    "register_recipe",
    "task_scores",
    "train",
    "write_card",
]

log = logging.getLogger(__name__)

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
    _load_builtin_recipes()
    if name not in RECIPES:
        raise InputError(f"no zoo recipe {name!r}; recipes: {', '.join(sorted(RECIPES))}")
    return RECIPES[name]


def _load_builtin_recipes() -> None:
    from circuitfind.zoo import agreement, docstring, greater_than, induction_2l, ioi  # noqa: F401


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


def _loss(model: Any, tokens: Tensor, weight: Tensor) -> Tensor:
    logits = model(tokens).logits[:, :-1]  # [b, T-1, V]
    ce = torch.nn.functional.cross_entropy(
        logits.reshape(-1, logits.shape[-1]), tokens[:, 1:].reshape(-1), reduction="none"
    ).view_as(weight)
    return (ce * weight).sum() / weight.sum().clamp(min=1.0)


def _phase(
    model: Any,
    opt: torch.optim.Optimizer,
    sample: Sampler,
    gen: torch.Generator,
    batch: int,
    steps: int,
    desc: str,
    progress: bool,
    *,
    sched: Any = None,
    penalty: Callable[[Any], Tensor] | None = None,
    running: float = float("nan"),
) -> float:
    """``steps`` optimiser steps on fresh batches (gradient clipped at 1; ``penalty(model)``
    added to the loss when given). Returns the running mean of the task loss."""
    bar = tqdm(range(steps), desc=desc, disable=not progress)
    for step in bar:
        tokens, weight = sample(gen, batch)
        loss = _loss(model, tokens, weight)
        opt.zero_grad(set_to_none=True)
        (loss if penalty is None else loss + penalty(model)).backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        if sched is not None:
            sched.step()
        running = loss.item() if math.isnan(running) else 0.98 * running + 0.02 * loss.item()
        if step % 25 == 0:
            bar.set_postfix(loss=f"{running:.3f}")
    return running


def train(
    name: str,
    *,
    seed: int,
    out: str | Path,
    quick: bool = False,
    threads: int = 1,
    progress: bool = True,
) -> dict[str, Any]:
    """Train zoo model NAME with ``seed`` and write the package files plus its card to ``out``.

    Deterministic for a seed (and thread count) on CPU. ``quick`` runs a few steps only, to test
    the path. Returns the card (scores, command, data recipe, time).
    """
    recipe = get_recipe(name)
    out = Path(out)
    torch.set_num_threads(threads)
    torch.manual_seed(seed)
    model, tokenizer = recipe.build()
    model.train()
    sample = recipe.sampler(tokenizer)
    gen = torch.Generator().manual_seed(seed)
    steps = recipe.quick_steps if quick else recipe.steps
    opt = torch.optim.AdamW(model.parameters(), lr=recipe.lr, weight_decay=recipe.weight_decay)

    def lr_at(step: int) -> float:
        if step < recipe.warmup:
            return (step + 1) / recipe.warmup
        frac = (step - recipe.warmup) / max(1, steps - recipe.warmup)
        return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * frac))

    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_at)
    start = time.time()
    running = _phase(
        model, opt, sample, gen, recipe.batch, steps, f"zoo:{name}", progress, sched=sched
    )
    consolidation = recipe.consolidation
    if consolidation is not None:
        trainable = [p for p in model.parameters() if p.requires_grad]
        opt = torch.optim.AdamW(trainable, lr=consolidation.lr, weight_decay=recipe.weight_decay)
        extra_steps = recipe.quick_steps if quick else consolidation.steps

        def penalty(m: Any) -> Tensor:
            return consolidation.weight * consolidation.penalty(m)

        running = _phase(
            model,
            opt,
            sample,
            gen,
            recipe.batch,
            extra_steps,
            f"zoo:{name} consolidation",
            progress,
            penalty=penalty,
            running=running,
        )
        steps += extra_steps
    train_s = time.time() - start
    model.eval()
    with torch.no_grad():
        scores = recipe.evaluate(model, tokenizer, seed + 1000)
    command = f"circuitfind zoo train {name} --seed {seed} --out {out}"
    if quick:
        command += " --quick"
    card = {
        "name": name,
        "family": recipe.family,
        "summary": recipe.summary,
        "seed": seed,
        "command": command,
        "steps": steps,
        "batch": recipe.batch,
        "lr": recipe.lr,
        "weight_decay": recipe.weight_decay,
        "threads": threads,
        "train_seconds": round(train_s, 1),
        "final_loss": round(running, 4),
        "scores": {k: round(float(v), 4) for k, v in scores.items()},
        "targets": recipe.targets,
        "meets_targets": all(scores.get(k, -math.inf) >= v for k, v in recipe.targets.items()),
        "n_params": sum(p.numel() for p in model.parameters()),
        "data": recipe.data
        + (f" Consolidation: {consolidation.description}." if consolidation else ""),
        "versions": {
            "torch": torch.__version__,
            "python": platform.python_version(),
            # float results (and so the trained bits) are reproducible on the same CPU model
            "cpu": cpu_name(),
        },
    }
    save(model, tokenizer, out)
    write_card(card, out)
    log.info("zoo:%s trained in %.0fs: %s", name, train_s, card["scores"])
    return card


def save(model: Any, tokenizer: Any, out: Path) -> None:
    """Write the files a zoo directory ships (float32 safetensors, HF config, tokenizer)."""
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out, safe_serialization=True)
    gen_cfg = out / "generation_config.json"
    if gen_cfg.exists():
        gen_cfg.unlink()  # not needed to load; keep the shipped set small
    tokenizer.save_pretrained(out)


def write_card(card: dict[str, Any], out: str | Path) -> None:
    """Write ``card.json`` and a readable ``card.md``."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "card.json").write_text(json.dumps(card, indent=2) + "\n")
    lines = [
        f"# zoo:{card['name']}",
        "",
        card["summary"],
        "",
        f"- family: `{card['family']}`, {card['n_params']:,} parameters",
        f"- trained by: `{card['command']}` ({card['steps']} steps, batch {card['batch']}, "
        f"AdamW lr {card['lr']}, wd {card['weight_decay']}, {card['threads']} CPU threads, "
        f"{card['train_seconds']} s)",
        f"- final training loss: {card['final_loss']}",
        "",
        "## Held-out scores",
        "",
        "| score | value | target |",
        "| --- | --- | --- |",
    ]
    for key, value in card["scores"].items():
        target = card["targets"].get(key)
        lines.append(f"| {key} | {value:.4f} | {'' if target is None else f'>= {target}'} |")
    lines += ["", "## Data", "", card["data"], ""]
    (out / "card.md").write_text("\n".join(lines))
