"""Prepared runs: the clean and ablated passes of a task, made once and shared.

One :class:`PreparedRuns` per (model, task, ablation, batch size) holds, for every batch, the
clean run's cache, the ablated sender outputs and the clean readout logits. Every scoring
method, the pruning search and :func:`circuitfind.evaluate` read them, so a discovery makes one
clean and one ablated pass per batch in all (for ``resample``, the ablated pass is the
corrupted forward; ``mean`` ablation averages the clean caches already made; ``zero`` needs
none).

Memory: per batch the clean cache (node outputs [S, b, p, d] plus the residual streams) and,
once a masked run asks for it, the clean-minus-ablated differences [S, b, p, d]; with
``resample`` also the corrupted node outputs. ``cf.cache_bytes`` gives the cache's size.

``streaming=True`` keeps none of it across batches: a batch's ablated values are made when a
method first reads them, and a method that needs each batch once (EAP and EAP-IG, one probed
pass per batch) releases the batch when done (``PreparedBatch.release``), so the run's memory
is one batch's, whatever the number of prompts. A released batch that is read again (pruning,
evaluation) makes its runs again: the same values, one more forward each. The memory plan
chooses streaming when the kept values of every prompt would not fit its budget.
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor
from tqdm.auto import tqdm

from circuitfind.errors import InputError
from circuitfind.graph import Graph
from circuitfind.model import ForwardCache, Model
from circuitfind.patching import Ablation, Batch, ablation_kind, batches, masked_forward
from circuitfind.sender_rows import PrefixSums
from circuitfind.tasks import Task
from circuitfind.tasks.metrics import Metric, get_metric

__all__ = ["MaskEvaluator", "PreparedBatch", "PreparedRuns"]

logger = logging.getLogger(__name__)


class PreparedBatch:
    """One batch's prepared runs: its ablated sender outputs, and its clean cache and clean
    readout logits, each made on first use (EAP needs no clean cache: its own clean pass
    records what it needs)."""

    def __init__(self, model: Model, batch: Batch, ablation: Ablation | None = None) -> None:
        self.model = model
        self.batch = batch
        self.ablation = ablation  # what makes ``ablated`` on first use (None: set from outside)
        self._ablated: Tensor | None = None  # [S, b|1, p|1, d]
        self._cache: ForwardCache | None = None
        self._logits: Tensor | None = None
        self._diff: Tensor | None = None

    @property
    def ablated(self) -> Tensor:
        """[S, b|1, p|1, d]: the ablated sender outputs (made on first use where not set)."""
        if self._ablated is None:
            if self.ablation is None:
                raise RuntimeError("this prepared batch has no ablated values and no ablation")
            with torch.no_grad():
                self._ablated = self.ablation.outputs(self.batch)
        return self._ablated

    @ablated.setter
    def ablated(self, value: Tensor) -> None:
        self._ablated = value

    def take_ablated(self) -> Tensor:
        """The ablated values, handed over: the batch forgets them (a streaming method may then
        overwrite them in place; a later read makes them again)."""
        out = self.ablated
        if self.ablation is not None:
            self._ablated = None
        return out

    def release(self) -> None:
        """Forget everything made for this batch (remade on the next read)."""
        if self.ablation is not None:
            self._ablated = None
        self._cache = self._logits = self._diff = None

    @property
    def cache(self) -> ForwardCache:
        """The clean run's cache (one clean forward, made once)."""
        if self._cache is None:
            with torch.no_grad():
                self._cache = self.model.cache(self.batch.clean, self.batch.attention_mask)
        return self._cache

    @property
    def clean_logits(self) -> Tensor:
        """[b, V]: the clean run's readout logits."""
        if self._logits is None:
            final = self.cache.resid_final
            assert final is not None
            with torch.no_grad():
                rows = torch.arange(self.batch.size, device=final.device)
                self._logits = self.model.unembed(final[rows, self.batch.readout])
        return self._logits

    @property
    def clean_diff(self) -> Tensor:
        """[S, b, p, d]: clean sender outputs minus ablated ones (made on first use)."""
        if self._diff is None:
            self._diff = self.cache.node_outputs() - self.ablated
        return self._diff

    def metric(
        self, task: Task, logits: Tensor, metric: str | Metric | None = None, variants: int = 1
    ) -> Tensor:
        """The metric of every prompt of this batch [variants * b] from readout ``logits``
        [variants * b, V] (variant-major); a metric that compares with the clean run (KL) gets
        this batch's clean logits."""
        m = task.metric if metric is None else get_metric(metric)
        clean = self.clean_logits.repeat(variants, 1) if m.needs_clean else None
        return task.metric_fn(
            logits.float(),
            self.batch.idx.repeat(variants),
            clean_logits=None if clean is None else clean.float(),
            reduce="none",
            metric=m,
        )


class PreparedRuns:
    """The clean and ablated passes of ``task`` on ``model``, per batch, made once.

    Attributes:
        model, graph: the model and its graph.
        task: the task.
        ablation: where ablated values come from (:class:`circuitfind.patching.Ablation`).
        kind: the ablation's canonical name.
        batch_size: prompts per batch.
        progress: whether methods show progress bars.
        checkpoint_dir: where long methods (exact, ACDC) checkpoint and resume, or None.
        batches: the :class:`PreparedBatch` of every batch.
    """

    def __init__(
        self,
        model: Model,
        task: Task,
        ablation: str = "resample",
        *,
        batch_size: int = 32,
        graph: Graph | None = None,
        progress: bool = False,
        streaming: bool = False,
    ) -> None:
        if not isinstance(batch_size, int) or batch_size < 1:
            raise InputError(f"batch size must be a positive integer; got {batch_size!r}")
        self.model = model
        self.task = task
        self.graph = graph if graph is not None else Graph.from_model(model)
        self.kind = ablation_kind(ablation)
        self.batch_size = batch_size
        self.progress = progress
        self.streaming = streaming
        self.checkpoint_dir: Path | None = None  # where long methods checkpoint (set by score)
        self.layout: Any = None  # a PositionLayout: edges are (edge, column) (set by score)
        self._memo: dict[tuple[str | None, bytes], Tensor] = {}
        self.batches = [PreparedBatch(model, b) for b in batches(task, batch_size, model.device)]
        with torch.no_grad():
            self.ablation = Ablation(
                model,
                task,
                self.kind,
                batch_size,
                clean_caches=_LazyCaches(self.batches) if self.kind.startswith("mean") else None,
            )
            for prep in self.batches:
                prep.ablation = self.ablation
                if streaming:  # the mean ablation's clean caches: not kept either
                    prep.release()
            if not streaming:
                for prep in tqdm(
                    self.batches,
                    desc="ablated runs",
                    disable=not progress or len(self.batches) < 2,
                    unit="batch",
                ):
                    prep.ablated = self.ablation.outputs(prep.batch)

    def __iter__(self) -> Iterator[PreparedBatch]:
        return iter(self.batches)

    def __len__(self) -> int:
        return len(self.batches)

    @property
    def n_prompts(self) -> int:
        return len(self.task)

    def evaluator(
        self, metric: str | Metric | None = None, *, reuse_prefix: bool = False
    ) -> MaskEvaluator:
        """The task metric of masked runs over these prepared runs (``reuse_prefix``: see
        :class:`MaskEvaluator`)."""
        return MaskEvaluator(self, metric, reuse_prefix=reuse_prefix)

    def metric_of(self, mask: Tensor, metric: str | Metric | None = None) -> Tensor:
        """The metric of every prompt [n] with the edges outside ``mask`` [S, R] ablated,
        remembered: the pruning search, the curves and evaluation ask for the same circuits,
        and each is run once."""
        valid = self.graph.valid if mask.dim() == 2 else self.graph.valid[..., None]
        keep = (mask > 0.5) & valid
        name = metric if isinstance(metric, str) or metric is None else metric.name
        if mask.dim() > 2:  # (edge, column) masks: the layout is part of the key
            name = f"{name}@{','.join(self.layout.names) if self.layout is not None else ''}"
        key = (name, bytes(np.packbits(keep.cpu().numpy()).tobytes()))
        if key not in self._memo:
            self._memo[key] = self.evaluator(metric).per_prompt(keep.float())
        return self._memo[key]

    def matches(self, model: Model, task: Task, ablation: str, batch_size: int) -> bool:
        """Whether these runs are the ones (model, task, ablation, batch_size) would make."""
        return (
            self.model is model
            and (self.task is task or self.task.clean is task.clean)
            and self.kind == ablation_kind(ablation)
            and self.batch_size == batch_size
        )

    def done_with(self, prep: PreparedBatch) -> None:
        """A one-pass method has finished with ``prep``: released when streaming."""
        if self.streaming:
            prep.release()


class _LazyCaches:
    """(batch, clean cache) pairs, each cache made when the mean ablation reads it."""

    def __init__(self, preps: list[PreparedBatch]) -> None:
        self.preps = preps

    def __iter__(self) -> Iterator[tuple[Batch, ForwardCache]]:
        return ((p.batch, p.cache) for p in self.preps)


class MaskEvaluator:
    """The task metric of masked runs over prepared runs.

    ``evaluator(mask)`` is the mean metric over the task's prompts with edges outside ``mask``
    ablated; ``evaluator.per_prompt(mask)`` one value a prompt. ``start_layer`` skips layers
    whose receivers keep every edge (their senders are then exactly the clean run's).

    ``reuse_prefix``: successive runs from the same start layer whose later receivers change
    little between runs (ACDC's trials) share each later receiver group's sum over the senders
    before that layer (:class:`circuitfind.sender_rows.PrefixSums`; at most the size of each
    batch's clean differences is kept) and what depends on the prefix and the ablated
    outputs alone. Off when the runs stream their batches.
    """

    def __init__(
        self, runs: PreparedRuns, metric: str | Metric | None = None, *, reuse_prefix: bool = False
    ) -> None:
        self.runs = runs
        self.model, self.graph, self.task = runs.model, runs.graph, runs.task
        self.metric = metric
        self.n = runs.n_prompts
        self.calls = 0
        self.reuse: dict[int, PrefixSums] | None = (
            {} if reuse_prefix and not runs.streaming else None
        )
        self.scratch: dict[tuple[int, ...], Tensor] = {}  # output buffers, shared by batches

    def per_prompt(self, mask: Tensor, start_layer: int = 0) -> Tensor:
        """The metric of each prompt [n] under ``mask`` [S, R]."""
        H = self.model.cfg.n_heads
        out = []
        self.calls += 1
        with torch.no_grad():
            for i, prep in enumerate(self.runs):
                prefix = None
                columns = None
                reuse = None
                if self.reuse is not None:
                    if i not in self.reuse:  # kept sums: at most the batch's clean differences
                        diff = prep.clean_diff
                        limit = diff.numel() * diff.element_size()
                        self.reuse[i] = PrefixSums(limit, self.scratch)
                    reuse = self.reuse[i]
                if mask.dim() > 2:
                    if self.runs.layout is None:
                        raise InputError(
                            "a position-aware mask [S, R, P] needs prepared runs with a "
                            "position layout (score(..., positions=...) sets one)"
                        )
                    columns = self.runs.layout.batch(
                        prep.batch.idx, prep.batch.clean.shape[1], self.model.device
                    )
                if start_layer > 0:
                    prefix = prep.clean_diff[: 1 + start_layer * (H + 1)]
                logits = masked_forward(
                    self.model,
                    self.graph,
                    prep.batch.clean,
                    prep.batch.attention_mask,
                    prep.ablated,
                    mask,
                    readout=prep.batch.readout,
                    prefix=prefix,
                    start_layer=start_layer,
                    columns=columns,
                    reuse=reuse,
                )
                out.append(prep.metric(self.task, logits, self.metric))
                self.runs.done_with(prep)  # streaming: the next masked run makes them again
        return torch.cat(out)

    def with_metric(self, metric: Any) -> MaskEvaluator:
        """The same prepared runs scored with another metric (nothing is recomputed)."""
        other = copy.copy(self)
        other.metric = metric
        return other

    def __call__(self, mask: Tensor, start_layer: int = 0) -> float:
        return float(self.per_prompt(mask, start_layer).mean())
