"""Zoo suite: held-out scores, head diagnostics and single-head ablations of the zoo's models.

    circuitfind benchmark --suite zoo [--quick] [--out reports/] [--seed 0]

Every model is loaded from its shipped directory with ``transformers`` (eager attention) and
scored on fresh held-out prompts drawn with seed ``2024 + --seed`` (different from every
training seed's evaluation seed, ``training seed + 1000``). Writes ``zoo.md`` and ``zoo.json``.
``--quick`` reports ``induction-2l`` only.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from circuitfind.bench.common import Report, stamp
from circuitfind.zoo import card, list_zoo, load_hf
from circuitfind.zoo.diagnostics import ablate_heads, hf_pattern_scores, repeated_tokens
from circuitfind.zoo.recipe import get_recipe

__all__ = ["HELD_OUT_SEED", "model_report", "run"]

HELD_OUT_SEED = 2024  # added to --seed: the held-out prompts' seed
SEGMENT = 12


def _table(title: str, scores: Tensor) -> list[str]:
    n_heads = scores.shape[1]
    lines = [f"{title}:", "", "| layer | " + " | ".join(f"h{h}" for h in range(n_heads)) + " |"]
    lines.append("| --- |" + " --- |" * n_heads)
    for layer, row in enumerate(scores.tolist()):
        cells = " | ".join(f"**{v:.2f}**" if v > 0.5 else f"{v:.2f}" for v in row)
        lines.append(f"| {layer} | {cells} |")
    return [*lines, ""]


def model_report(name: str, seed: int) -> tuple[list[str], dict[str, Any]]:
    """The markdown section of zoo model NAME and its raw numbers."""
    model, tok = load_hf(name)
    recipe = get_recipe(name)
    info = card(name)
    with torch.no_grad():
        scores = recipe.evaluate(model, tok, seed)
    special = set(tok.all_special_ids)
    candidates = [i for i in range(len(tok)) if i not in special]
    tokens = repeated_tokens(candidates, n=64, length=SEGMENT, seed=seed)
    heads = hf_pattern_scores(model, tokens)
    main_score = next(iter(recipe.targets))
    n_layers, n_heads = heads["previous_token"].shape
    ablated = torch.zeros(n_layers, n_heads)
    for layer in range(n_layers):
        for head in range(n_heads):
            with ablate_heads(model, [(layer, head)]), torch.no_grad():
                ablated[layer, head] = recipe.evaluate(model, tok, seed)[main_score]
    lines = [
        f"## zoo:{name}",
        "",
        info.get("summary", ""),
        "",
        f"- family `{info.get('family')}`, {info.get('n_params', 0):,} parameters",
        f"- trained by `{info.get('command')}` in {info.get('train_seconds')} s "
        f"({info.get('steps')} steps, {info.get('threads')} CPU thread(s))",
        f"- data: {info.get('data', '')}",
        "",
        f"Held-out scores (fresh prompts, seed {seed}):",
        "",
        "| score | value | target |",
        "| --- | --- | --- |",
    ]
    for key, value in scores.items():
        target = recipe.targets.get(key)
        lines.append(f"| {key} | {value:.4f} | {'' if target is None else f'>= {target}'} |")
    lines += [
        "",
        f"Attention-pattern diagnostics on 64 random sequences `A A` (|A| = {SEGMENT}, tokens "
        "drawn from the whole vocabulary without special tokens; bold > 0.5):",
        "",
    ]
    lines += _table("Previous-token score (attention to i-1)", heads["previous_token"])
    lines += _table("Duplicate-token score (attention to i-|A|)", heads["duplicate_token"])
    lines += _table("Induction score (attention to i-|A|+1)", heads["induction"])
    lines += _table(
        f"{main_score} with one head's output zeroed (unablated: {scores[main_score]:.4f})",
        ablated,
    )
    data = {
        "scores": scores,
        "targets": dict(recipe.targets),
        "heads": {k: v.tolist() for k, v in heads.items()},
        f"ablated_{main_score}": ablated.tolist(),
    }
    return lines, data


def run(
    out_dir: Path,
    *,
    quick: bool,
    seed: int,
    models: Sequence[str] | None = None,
    command: str | None = None,
) -> dict[str, Any]:
    """Write ``zoo.md`` / ``zoo.json``: every zoo model's section (or those in ``models``)."""
    held_out = HELD_OUT_SEED + seed
    report = Report("zoo", "The circuitfind zoo", stamp(seed, quick, command))
    report.add(
        f"Held-out prompts drawn with seed {held_out}. Each model is retrained by the command in "
        "its section; the shipped files are exactly that command's output.",
        "",
    )
    names = [n for n in list_zoo() if models is None or n in models]
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the numbers of a 1-thread run (the zoo trains on 1 thread)
    try:
        for name in names:
            lines, data = model_report(name, held_out)
            report.add(*lines)
            report.data[name] = data
    finally:
        torch.set_num_threads(threads)
    return {"files": report.write(Path(out_dir)), "models": names}
