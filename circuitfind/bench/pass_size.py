"""Pass-size suite: how many tokens one batched exact-patching pass should hold
(``methods.exact.tokens_per_pass``).

Exact patching stacks several patched variants of a batch on the batch axis. This times the
engine's own patched pass (``exact._patched_logits``) per edge, on GPT-2-small-size random
weights (32 prompts x 16 tokens), for receivers in an early, a middle and the last layer, at
several token budgets a pass, against the bare HF forward in the same run. Writes
``exact_pass_size.md`` and ``.json``:

    circuitfind benchmark --suite pass-size [--set repeat=3]
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from circuitfind.bench.common import Report, md_table, stamp, time_it

__all__ = ["BUDGETS", "SENDERS", "run"]

BUDGETS = (512, 1024, 2048, 4096, 8192, 16384)
SENDERS = 32  # edges timed per receiver and budget (the largest budget holds them all)


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
    report.data = data
    return {"files": report.write(out_dir), "hf_forward_s": f}
