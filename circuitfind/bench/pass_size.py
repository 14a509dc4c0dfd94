"""Pass-size suite: how many tokens one batched exact-patching pass should hold
(``methods.exact.tokens_per_pass``).

Exact patching stacks several patched variants of a batch on the batch axis. This times the
engine's own patched pass (``exact._patched_logits``) per edge, on GPT-2-small-size random
weights (32 prompts x 16 tokens), for receivers in an early, a middle and the last layer, at
several token budgets a pass, against the bare HF forward in the same run; and, for corrupted
prompts that share their clean twins' first k tokens, the same pass with and without skipping
the clean prefix (``skip_prefix``: the pass starts at the first position its senders change).
Writes ``exact_pass_size.md`` and ``.json``:

    circuitfind benchmark --suite pass-size [--set repeat=3]
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from circuitfind.bench.common import Report, md_table, stamp, time_it

__all__ = ["BUDGETS", "SENDERS", "prefix_rows", "run"]

BUDGETS = (512, 1024, 2048, 4096, 8192, 16384)
SENDERS = 32  # edges timed per receiver and budget (the largest budget holds them all)
PREFIX_SENDERS = 16  # edges timed per receiver and shared-prefix length


def _passes(
    model: Any,
    graph: Any,
    prep: Any,
    ctx: Any,
    r: int,
    senders: Tensor,
    per_pass: int,
    skip: bool,
) -> None:
    """Exact patching's passes for ``senders`` into receiver ``r`` on one prepared batch."""
    from circuitfind.methods.exact import _patched_logits

    batch, cache, diff = prep.batch, prep.cache, prep.clean_diff
    b, p = batch.clean.shape
    with torch.no_grad():
        for part in senders.split(per_pass):
            delta = -diff[part].reshape(len(part) * b, p, -1)
            _patched_logits(model, graph, cache, ctx, batch.readout, r, delta, skip)


def prefix_rows(case: Any, repeat: int, seed: int) -> tuple[list[list[Any]], dict[str, Any]]:
    """Per-edge time of the patched pass with and without skipping the clean prefix, for
    corrupted prompts that share their clean twins' first k = 0, p/4, p/2, 3p/4 tokens, in an
    early and a middle layer (the last layer computes only the readout either way)."""
    from circuitfind.methods.exact import tokens_per_pass
    from circuitfind.runs import PreparedRuns
    from circuitfind.tasks import Task

    model, graph, task = case.model, case.graph, case.task
    n, p = task.clean.shape
    g = torch.Generator().manual_seed(seed + 1)
    L = model.cfg.n_layers
    picks = [f"a{layer}.h0<q>" for layer in (L // 6, 2 * L // 3)]
    rows: list[list[Any]] = []
    data: dict[str, Any] = {}
    for k in (0, p // 4, p // 2, 3 * p // 4):
        corrupted = task.clean.clone()
        corrupted[:, k:] = torch.randint(0, model.cfg.d_vocab, (n, p - k), generator=g)
        shared = Task.from_tokens(task.clean, corrupted, answer=task.answer, wrong=task.wrong)
        prep = PreparedRuns(model, shared, batch_size=n, graph=graph).batches[0]
        ctx = model.context(prep.batch.clean, prep.batch.attention_mask)
        per_pass = max(1, tokens_per_pass(model.device) // (n * p))
        for name in picks:
            r = graph.receiver_index[name]
            senders = torch.arange(min(PREFIX_SENDERS, int(graph.n_upstream[r])))
            times = {}
            for skip in (False, True):
                one = functools.partial(
                    _passes, model, graph, prep, ctx, r, senders, per_pass, skip
                )
                times[skip] = time_it(one, repeat)
            plain, skipped = times[False], times[True]
            ratios = sorted(a / b for a, b in zip(plain.runs, skipped.runs, strict=True))
            data[f"{name}@{k}"] = {
                "plain_s": plain.runs,
                "skip_s": skipped.runs,
                "edges": len(senders),
            }
            rows.append(
                [
                    name,
                    k,
                    f"{plain.seconds / len(senders) * 1000:.1f}",
                    f"{skipped.seconds / len(senders) * 1000:.1f}",
                    f"{plain.seconds / skipped.seconds:.2f} ({ratios[0]:.2f}-{ratios[-1]:.2f})",
                ]
            )
    return rows, data


def run(
    out_dir: Path,
    *,
    quick: bool,
    seed: int,
    repeat: int = 3,
    budgets: tuple[int, ...] = BUDGETS,
    shape: Any = None,
    command: str | None = None,
) -> dict[str, Any]:
    """Time exact patching's patched pass per edge at each token budget; write the report.

    ``shape``: the random model's ``Shape`` (default GPT-2 small); receivers are timed in layers
    L/6, 2L/3 and L - 1 (2, 8 and 11 on GPT-2 small).
    """
    from circuitfind.bench.speed import GPT2_SMALL, random_case
    from circuitfind.methods.exact import _patched_logits, tokens_per_pass
    from circuitfind.patching import Ablation, batches

    report = Report(
        "exact_pass_size", "Exact patching: tokens a batched pass", stamp(seed, quick, command)
    )
    case = random_case(shape or GPT2_SMALL, 32, 16, seed=seed)
    model, graph, task = case.model, case.graph, case.task
    f = time_it(lambda: case.hf(input_ids=task.clean), repeat).seconds
    batch = next(batches(task, len(task), model.device))
    b, p = batch.clean.shape
    L = model.cfg.n_layers
    picks = {
        f"a{layer}.h0<q>": graph.receiver_index[f"a{layer}.h0<q>"]
        for layer in (L // 6, 2 * L // 3, L - 1)
    }
    rows: list[list[Any]] = []
    data: dict[str, Any] = {"hf_forward_s": f, "per_edge_s": {}}
    with torch.no_grad():
        cache = model.cache(batch.clean)
        diff = cache.node_outputs() - Ablation(model, task, "resample").outputs(batch)
        ctx = model.context(batch.clean)
        senders = torch.arange(min(SENDERS, int(graph.n_upstream[min(picks.values())])))
        for name, r in picks.items():
            for budget in budgets:
                per_pass = max(1, budget // (b * p))

                def one(per_pass: int = per_pass, r: int = r) -> None:
                    for part in senders.split(per_pass):
                        delta = -diff[part].reshape(len(part) * b, p, -1)
                        _patched_logits(model, graph, cache, ctx, batch.readout, r, delta)

                s = time_it(one, repeat).seconds / len(senders)
                data["per_edge_s"][f"{name}@{budget}"] = s
                rows.append([name, budget, per_pass, f"{s * 1000:.1f}", f"{f / s:.2f}"])
    report.add(
        f"Random GPT-2 {(shape or GPT2_SMALL).label} weights, {b} prompts x {p} tokens, "
        f"{len(senders)} edges a receiver "
        f"and budget, median of {repeat}. HF forward F = {f:.3f} s. The engine's default "
        f"here: {tokens_per_pass(model.device)} tokens a pass.",
        "",
        *md_table(["receiver", "tokens a pass", "variants a pass", "ms / edge", "F / edge"], rows),
    )
    prefix, data["shared_prefix"] = prefix_rows(case, repeat, seed)
    report.add(
        "",
        "## Corrupted prompts that share a clean prefix",
        "",
        f"The corrupted twin keeps the clean prompt's first k of {p} tokens (the rest "
        f"resampled); {PREFIX_SENDERS} edges a receiver, the engine's default tokens a pass, "
        f"median of {repeat}, both passes timed in turn on the same inputs (speed-up: plain / "
        "skipping, with the spread of the per-repeat ratios). Skipping starts the pass at the "
        "first position its senders change; the scores are the same "
        "(`tests/test_patching.py`). By default a pass skips where the prefix is at least a "
        "quarter of the positions.",
        "",
        *md_table(
            ["receiver", "shared k", "plain ms / edge", "skipping ms / edge", "speed-up"], prefix
        ),
    )
    report.data = data
    return {"files": report.write(out_dir), "hf_forward_s": f}
