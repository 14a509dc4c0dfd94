"""``circuitfind.score``: every edge of the graph scored by one method, none kept yet."""

from __future__ import annotations

import logging
import platform
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from circuitfind.checks import check_context, check_options, check_task
from circuitfind.circuit import Circuit
from circuitfind.errors import InputError
from circuitfind.methods.table import method_options, method_spec
from circuitfind.model import Model
from circuitfind.patching import ablation_kind
from circuitfind.positions import layout_for
from circuitfind.runs import PreparedRuns
from circuitfind.tasks import Task

__all__ = ["prepare", "score", "versions"]

logger = logging.getLogger(__name__)


def versions() -> dict[str, str]:
    """The versions a result depends on (recorded in every circuit's meta)."""
    import transformers

    from circuitfind import __version__

    return {
        "circuitfind": __version__,
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "python": platform.python_version(),
    }


def _check_is_task(task: Any) -> None:
    if not isinstance(task, Task):
        raise InputError(
            f"expected a circuitfind Task; got {type(task).__name__} (build one with "
            "cf.get_task, Task.from_texts or Task.from_tokens)"
        )
    if len(task) == 0:
        raise InputError("the task has no prompts")


def prepare(
    model: Model,
    task: Task,
    ablation: str = "resample",
    *,
    batch_size: int | None = None,
    progress: bool = False,
    runs: PreparedRuns | None = None,
    streaming: bool = False,
) -> PreparedRuns:
    """The prepared runs of (model, task, ablation, batch size): ``runs`` when it is those
    already (``batch_size=None`` accepts theirs), else new ones (default batch size 32)."""
    _check_is_task(task)
    check_options(batch_size=batch_size)
    if runs is not None and runs.matches(model, task, ablation, batch_size or runs.batch_size):
        runs.progress = progress
        return runs
    check_task(task, ablation_kind(ablation))
    check_context(model, task)
    return PreparedRuns(
        model, task, ablation, batch_size=batch_size or 32, progress=progress, streaming=streaming
    )


def _memory_plan(
    model: Model,
    task: Task,
    method: str,
    ablation: str,
    batch_size: int | str,
    max_memory: int | str | None,
    opts: dict[str, Any],
    columns: int = 0,
) -> Any:
    """The memory plan of the run (``columns``: a position layout's, 0 for none); an explicit
    batch size over the budget is refused."""
    from circuitfind.memory import format_bytes
    from circuitfind.plan import make_plan

    _check_is_task(task)
    plan = make_plan(
        model,
        task,
        method,
        ablation=ablation,
        batch_size=batch_size,
        max_memory=max_memory,
        options=opts,
        columns=columns,
    )
    if not plan.fits:
        raise InputError(
            f"{method} at batch size {plan.batch_size} needs about {format_bytes(plan.total)}, "
            f"over the budget of {format_bytes(plan.budget or 0)} ({plan.budget_source}): use "
            "batch_size='auto' (--batch-size omitted) to choose one that fits, or see "
            "`circuitfind plan`"
        )
    return plan


def score(
    model: Model,
    task: Task,
    *,
    method: str = "eap-ig-inputs",
    ablation: str = "resample",
    batch_size: int | str = "auto",
    progress: bool = True,
    checkpoint_dir: str | Path | None = None,
    seed: int | None = None,
    runs: PreparedRuns | None = None,
    max_memory: int | str | None = None,
    positions: bool | str | Sequence[str] | None = None,
    **options: Any,
) -> Circuit:
    """Score every edge of ``model``'s graph on ``task`` with one method; keep none yet.

    Args:
        method: a row of :data:`circuitfind.methods.METHODS` (any common spelling).
        ablation: what an ablated edge carries: resample (the corrupted prompt's value), mean,
            mean-positional or zero.
        checkpoint_dir: where long methods (exact, ACDC) checkpoint and resume.
        batch_size: prompts a batch, or ``"auto"`` (the default): the largest batch up to 32
            whose memory plan (:func:`circuitfind.plan.make_plan`) fits ``max_memory``; a run
            that does not fit even one prompt a batch is refused before it starts, with the
            figure. Reused ``runs`` keep their batch size.
        runs: prepared runs to reuse (they are used only if they match model, task, ablation
            and batch size).
        max_memory: the memory budget (bytes, or ``"4GiB"``); default: what the model's device
            has free. With an explicit ``batch_size`` it is checked, not chosen.
        positions: True makes every edge one per position, a list of span names (``["S1",
            "IO", "S2", "END"]``, from ``task.spans``) one per span (tokens outside them form
            the span ``other``); see :mod:`circuitfind.positions`. For exact, EAP, EAP-IG
            and the learned masks (edge-pruning, ugs).
        **options: the method's options (``steps`` for EAP-IG, ``tau`` for ACDC, ...; see its
            table row); ``None`` means the default.

    Returns:
        A ``Circuit`` whose ``score_matrix`` holds every edge's score and whose ``in_graph``
        is empty (or, for a method that prunes itself, its own choice). ``meta`` records the
        method, its options, the ablation, the metric and the scoring time; the prepared runs
        are on ``circuit.runs`` for :func:`circuitfind.prune` and :func:`circuitfind.evaluate`.
    """
    spec = method_spec(method)
    opts = method_options(spec, options)
    check_options(**{k: v for k, v in opts.items() if k in ("steps", "tau")})
    if seed is not None:
        torch.manual_seed(seed)
    t0 = time.perf_counter()
    _check_is_task(task)
    layout = layout_for(task, positions)  # a bad span fails before any work
    if layout is not None:
        from circuitfind.methods.positional import positional_function

        fn = positional_function(spec.name, spec.function())
    else:
        fn = spec.function()
    plan, kwargs, streaming = None, {}, False
    if (
        batch_size == "auto"
        and runs is not None
        and runs.matches(model, task, ablation, runs.batch_size)
    ):
        batch_size = runs.batch_size
    elif batch_size == "auto" or max_memory is not None:
        columns = 0 if layout is None else layout.n_columns
        plan = _memory_plan(model, task, spec.name, ablation, batch_size, max_memory, opts, columns)
        batch_size, kwargs = plan.batch_size, dict(plan.method_kwargs)
        streaming = plan.streaming
    assert isinstance(batch_size, int)
    runs = prepare(
        model,
        task,
        ablation,
        batch_size=batch_size,
        progress=progress,
        runs=runs,
        streaming=streaming,
    )
    t_prepared = time.perf_counter()
    runs.checkpoint_dir = Path(checkpoint_dir) if checkpoint_dir is not None else None
    runs.layout = layout
    result = fn(runs, **opts, **kwargs)
    t_scored = time.perf_counter()
    graph = runs.graph
    kept = result.kept if result.kept is not None else torch.zeros_like(graph.valid)
    meta: dict[str, Any] = {
        "model": model.cfg.name or model.cfg.family,
        "family": model.cfg.family,
        "task": task.name,
        "method": spec.name,
        "level": spec.level,
        "prunes_itself": spec.prunes,
        "options": opts,
        "ablation": runs.kind,
        "metric_name": task.metric.name,
        "metric_description": task.metric.description,
        "higher_is_better": task.metric.higher_is_better,
        "n_prompts": len(task),
        "batch_size": batch_size,
        "score_kind": result.orientation or spec.orientation,
        "timing": {
            "prepare_s": round(t_prepared - t0, 4),
            "scoring_s": round(t_scored - t_prepared, 4),
        },
        "seed": seed,
        "task_seed": task.meta.get("seed"),
        "versions": versions(),
    }
    if "steps" in opts:
        meta["steps"] = opts["steps"]
    if plan is not None:
        meta["memory_plan"] = {
            "batch_size": plan.batch_size,
            "estimated_peak_bytes": plan.total,
            "budget_bytes": plan.budget,
            "budget_source": plan.budget_source,
            "streaming": plan.streaming,
            **plan.method_kwargs,
        }
    if layout is not None:
        meta["positions"] = {**layout.to_meta(), "spec": layout.spec()}
    circuit = Circuit(
        graph,
        result.edges,
        kept if kept.dim() == result.edges.dim() else kept[..., None].expand_as(result.edges),
        meta,
        result.nodes,
        positions=None if layout is None else layout.names,
    )
    circuit.runs = runs
    return circuit
