"""Inputs checked before the work: options, prompts, context length, effect size, cost.

Every check raises :class:`~circuitfind.errors.InputError` with one line naming the problem
and the fix, so that a run is refused in its first second instead of failing (or printing a
meaningless number) after its last.
"""

from __future__ import annotations

import logging
import math
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from circuitfind.errors import InputError

CANNOT_MOVE = 1e-6  # relative: below this the metric does not move at all

__all__ = [
    "CostEstimate",
    "check_context",
    "check_effect",
    "check_options",
    "check_task",
    "confirm_cost",
    "estimate_cost",
]

logger = logging.getLogger(__name__)


# ---------------------------------------------------------------------------- options
def _int_at_least(name: str, value: Any, low: int) -> None:
    if value is None:
        return
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise InputError(f"{name} must be an integer >= {low}; got {value!r}")


def _finite_at_least(name: str, value: Any, low: float, strict: bool = False) -> None:
    if value is None:
        return
    try:
        x = float(value)
    except (TypeError, ValueError):
        raise InputError(f"{name} must be a number; got {value!r}") from None
    bad = not math.isfinite(x) or (x <= low if strict else x < low)
    if bad:
        raise InputError(f"{name} must be a finite number {'>' if strict else '>='} {low}; got {x}")


def check_options(
    *,
    batch_size: int | None = None,
    steps: int | None = None,
    n: int | None = None,
    top_n: int | None = None,
    threshold: float | None = None,
    target_faithfulness: float | None = None,
    tau: float | None = None,
) -> None:
    """Refuse impossible options before anything is loaded (``None`` = not given).

    ``batch_size``, ``steps`` and ``n`` >= 1; ``top_n`` >= 0; ``threshold`` and ``tau`` finite
    and >= 0; ``target_faithfulness`` finite and > 0.
    """
    names = {"batch_size": "--batch-size", "steps": "--steps", "n": "--n", "top_n": "--top-n"}
    _int_at_least(names["batch_size"], batch_size, 1)
    _int_at_least(names["steps"], steps, 1)
    _int_at_least(names["n"], n, 1)
    _int_at_least(names["top_n"], top_n, 0)
    _finite_at_least("--threshold", threshold, 0.0)
    _finite_at_least("--tau", tau, 0.0)
    _finite_at_least("--target-faithfulness", target_faithfulness, 0.0, strict=True)


# ---------------------------------------------------------------------------- prompts
def check_task(task: Any, ablation: str = "resample") -> None:
    """Refuse a task whose metric cannot move: with resample ablation, corrupted prompts all
    equal to their clean prompts; with a metric that needs wrong answers, every answer equal to
    its wrong answer. Some such rows among others are a warning (they dilute the effect)."""
    import torch

    name = getattr(task, "name", "task")
    clean, corrupted = task.clean, task.corrupted
    if ablation == "resample" and clean.shape == corrupted.shape:
        same = (clean == corrupted).all(1)
        if bool(same.all()):
            raise InputError(
                f"every corrupted prompt of {name!r} equals its clean prompt, so resample "
                "ablation changes nothing; give corrupted prompts that differ, or choose "
                "--ablation mean or zero"
            )
        if bool(same.any()):
            logger.warning(
                "%d of %d corrupted prompts of %r equal their clean prompts (no effect there)",
                int(same.sum()),
                len(same),
                name,
            )
    metric: Any = getattr(task, "metric", None)
    if task.wrong is not None and getattr(metric, "needs_wrong", False):
        a, w = task.answer, task.wrong
        a = a[:, None] if a.dim() == 1 else a
        w = w[:, None] if w.dim() == 1 else w
        # a row cannot move when its answer set equals its wrong set
        same_rows = torch.tensor(
            [
                set(x[x >= 0].tolist()) == set(y[y >= 0].tolist())
                for x, y in zip(a.unbind(0), w.unbind(0))
            ]
        )
        if bool(same_rows.all()):
            raise InputError(
                f"every answer of {name!r} equals its wrong answer, so {metric.name} is 0 "
                "whatever the model does; fix the answers or choose the logprob metric"
            )
        if bool(same_rows.any()):
            logger.warning(
                "%d of %d prompts of %r have answer == wrong (their %s is always 0)",
                int(same_rows.sum()),
                len(same_rows),
                name,
                metric.name,
            )


def check_context(model: Any, task: Any) -> None:
    """Refuse prompts longer than the model's context (``cfg.n_ctx``: the learned position
    table, or ``max_position_embeddings`` of rotary models, beyond which they were never
    trained and RoPE scaling tables end)."""
    n_ctx = getattr(getattr(model, "cfg", None), "n_ctx", None)
    if not n_ctx:
        return
    length = int(task.readout.max()) + 1
    if length > n_ctx:
        longest = int(task.readout.argmax())
        raise InputError(
            f"prompt {longest} of {getattr(task, 'name', 'the task')!r} has {length} tokens, "
            f"more than the model's context of {n_ctx}; shorten the prompts"
        )


# ---------------------------------------------------------------------------- effect size
def check_effect(full: Any, empty: Any, what: str = "task") -> None:
    """Refuse a metric that cannot move: per-prompt metrics ``full`` and ``empty`` [n] (all
    edges kept, all ablated) that are not finite, or equal on every prompt to float precision
    (clean == corrupted prompts, answer == wrong, an ablation that changes nothing): a
    faithfulness, CPR or CMD would then be a ratio of rounding noise. An effect that moves but
    averages out, or is small against its noise, is not refused here: the evaluation flags it
    (:mod:`circuitfind.evaluation`)."""
    import torch

    full, empty = torch.as_tensor(full).double(), torch.as_tensor(empty).double()
    if not (bool(torch.isfinite(full).all()) and bool(torch.isfinite(empty).all())):
        raise InputError(
            f"the {what}'s metric is not finite (full {float(full.mean())}, empty "
            f"{float(empty.mean())}); check the prompts and the model's dtype (float16 can "
            "overflow; try --dtype float32)"
        )
    d = float((full - empty).abs().max()) if full.numel() else 0.0
    scale = max(1.0, float(torch.maximum(full.abs(), empty.abs()).max()))
    if d <= CANNOT_MOVE * scale:
        raise InputError(
            f"the {what}'s metric cannot move: every prompt scores the same with all edges "
            f"kept and with all ablated (largest difference {d:.2g}); check that the corrupted "
            "prompts differ from the clean ones and that answer and wrong differ"
        )


# ---------------------------------------------------------------------------- cost
@dataclass(frozen=True)
class CostEstimate:
    """What a run is expected to cost (a rough figure, from one timed forward pass)."""

    seconds: float
    bytes: int  # peak memory: weights + prepared runs + one working batch
    forwards: float  # forward passes of one batch, counted in full-model equivalents
    method: str

    def describe(self) -> str:
        return f"~{_duration(self.seconds)} and ~{_size(self.bytes)} of memory ({self.method})"


def _duration(s: float) -> str:
    if s < 90:
        return f"{s:.0f} s"
    if s < 5400:
        return f"{s / 60:.0f} min"
    return f"{s / 3600:.1f} h"


def _size(b: float) -> str:
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if b < 1024 or unit == "TB":
            return f"{b:.0f} {unit}" if unit == "B" else f"{b:.1f} {unit}"
        b /= 1024
    return f"{b:.1f} TB"  # pragma: no cover


def estimate_cost(
    model: Any,
    task: Any,
    method: str,
    *,
    batch_size: int = 32,
    steps: int = 5,
    prune_search: bool = True,
    seconds_per_forward: float | None = None,
    train_steps: int = 200,
) -> CostEstimate:
    """Time and memory of ``method`` on ``task``, from one timed forward pass of one batch.

    Counted in forward passes of one batch (a backward as two): EAP 3 a batch; EAP-IG
    ``3 * steps + 1``; exact one pass a batch for every edge, each from its receiver's layer on;
    ACDC the same for every edge tried (all, at worst) over every batch; node ablation one pass
    a node and batch; the learned masks (edge-pruning, UGS) a masked forward and backward a
    training step and batch (``train_steps``); the pruning search and the faithfulness curve
    about 30 masked passes a batch. Memory: :func:`circuitfind.plan.make_plan`'s peak at
    ``batch_size`` (weights, caches, probes, score sums, masks).
    """
    import torch

    from circuitfind.graph import Graph

    cfg = model.cfg
    n = len(task)
    n_batches = -(-n // batch_size)
    seq = int(task.readout.max()) + 1
    graph = Graph.from_model(model)
    depth = [
        (cfg.n_layers - (rec.layer if rec.layer is not None else cfg.n_layers) + 0.5)
        / max(1, cfg.n_layers)
        for rec in graph.receivers
    ]
    per_edge = sum(int(u) * d for u, d in zip(graph.n_upstream.tolist(), depth))
    per_batch = {
        "eap": 3.0,
        "eap-ig-inputs": 3.0 * steps + 1,
        "eap-ig-activations": 3.0 * steps + 1,
        "exact": per_edge + 1,
        "acdc": per_edge,
        "node": float(cfg.n_layers * (cfg.n_heads + 1)),
        "edge-pruning": 3.0 * train_steps,
        "ugs": 3.0 * train_steps,
    }.get(method, 3.0)
    forwards = n_batches * (per_batch + (30.0 if prune_search else 0.0) + 2)
    if seconds_per_forward is None:
        b = min(batch_size, n)
        with torch.no_grad():
            tokens = task.clean[:b, :seq].to(model.device)
            mask = None if task.attention_mask is None else task.attention_mask[:b, :seq]
            model(tokens, attention_mask=mask)  # warm-up
            t0 = time.perf_counter()
            model(tokens, attention_mask=mask)
            seconds_per_forward = time.perf_counter() - t0
    from circuitfind.plan import make_plan

    plan = make_plan(  # the memory figure is the memory plan's, term by term
        model,
        task,
        method,
        batch_size=batch_size,
        options={"steps": steps, "train_steps": train_steps},
    )
    return CostEstimate(forwards * seconds_per_forward, plan.total, forwards, method)


def confirm_cost(
    cost: CostEstimate,
    *,
    yes: bool = False,
    max_seconds: float = 600.0,
    max_bytes: int | None = None,
    ask: Callable[[str], str] | None = None,
) -> None:
    """Go ahead, or stop before an expensive run.

    Under ``max_seconds`` (and ``max_bytes`` when given, default: the machine's memory when
    known) or with ``yes``: nothing happens (the estimate is logged). Otherwise, on a terminal
    ``ask`` (default ``input``) asks whether to go on; without one (scripts, CI) it is an
    ``InputError`` naming ``--yes``.
    """
    if max_bytes is None:
        max_bytes = _memory_bytes()
    big = cost.seconds > max_seconds or (max_bytes is not None and cost.bytes > max_bytes)
    logger.info("estimated cost: %s", cost.describe())
    if not big or yes:
        return
    question = f"this run is estimated to take {cost.describe()}"
    if ask is None and sys.stdin.isatty() and sys.stderr.isatty():
        ask = input
    if ask is None:
        raise InputError(f"{question}; pass --yes to run it anyway, or lower --n")
    answer = ask(f"{question}. Continue? [y/N] ").strip().lower()
    if answer not in ("y", "yes"):
        raise InputError(f"{question}; stopped (pass --yes to skip this question)")


def _memory_bytes() -> int | None:
    try:
        import os

        return int(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"))
    except (ValueError, OSError, AttributeError):
        return None
