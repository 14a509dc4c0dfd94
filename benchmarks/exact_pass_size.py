"""How many tokens one batched exact-patching pass should hold (``methods.exact.tokens_per_pass``).

Exact patching stacks several patched variants of a batch on the batch axis. This times the
engine's own patched pass (``exact._patched_logits``) per edge, on GPT-2-small-size random
weights (32 prompts x 16 tokens), for receivers in an early, a middle and the last layer, at
several token budgets a pass, against the bare HF forward in the same run. Writes
``reports/exact_pass_size.md`` and ``.json``.

    PYTHONPATH=. python benchmarks/exact_pass_size.py [--out reports] [--repeat 3]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from circuitfind.bench.common import Report, md_table, stamp
from circuitfind.bench.speed import GPT2_SMALL, random_case, time_it
from circuitfind.methods.exact import _patched_logits, tokens_per_pass
from circuitfind.patching import Ablation, batches

BUDGETS = (512, 1024, 2048, 4096, 8192, 16384)
SENDERS = 32  # edges timed per receiver and budget (the largest budget holds them all)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, default=Path("reports"))
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()

    case = random_case(GPT2_SMALL, 32, 16, seed=0)
    model, graph, task = case.model, case.graph, case.task
    f = time_it(lambda: case.hf(input_ids=task.clean), args.repeat).seconds
    batch = next(batches(task, len(task), model.device))
    b, p = batch.clean.shape
    picks = {
        f"a{layer}.h0<q>": graph.receiver_index[f"a{layer}.h0<q>"]
        for layer in (2, 8, model.cfg.n_layers - 1)
    }
    rows, data = [], {"hf_forward_s": f, "per_edge_s": {}}
    with torch.no_grad():
        cache = model.cache(batch.clean)
        diff = cache.node_outputs() - Ablation(model, task, "resample").outputs(batch)
        ctx = model.context(batch.clean)
        senders = torch.arange(SENDERS)
        for name, r in picks.items():
            for budget in BUDGETS:
                per_pass = max(1, budget // (b * p))

                def run(per_pass: int = per_pass, r: int = r) -> None:
                    for part in senders.split(per_pass):
                        delta = -diff[part].reshape(len(part) * b, p, -1)
                        _patched_logits(model, graph, cache, ctx, batch.readout, r, delta)

                s = time_it(run, args.repeat).seconds / SENDERS
                data["per_edge_s"][f"{name}@{budget}"] = s
                rows.append([name, budget, per_pass, f"{s * 1000:.1f}", f"{f / s:.2f}"])
    report = Report("exact_pass_size", "Exact patching: tokens a batched pass", stamp(0, False))
    report.add(
        f"GPT-2-small-size random weights, {b} prompts x {p} tokens, {SENDERS} edges a receiver "
        f"and budget, median of {args.repeat}. HF forward F = {f:.3f} s. The engine's default "
        f"here: {tokens_per_pass(model.device)} tokens a pass.",
        "",
        *md_table(["receiver", "tokens a pass", "variants a pass", "ms / edge", "F / edge"], rows),
    )
    report.data = data
    print(report.write(args.out)["markdown"])


if __name__ == "__main__":
    main()
