"""``circuitfind zoo``: list the bundled models with their cards, or retrain one."""

from __future__ import annotations

import argparse
import json
import logging
from typing import Any

__all__ = ["register"]


def _list(args: argparse.Namespace) -> int:
    from circuitfind.zoo import card, list_zoo, resolve

    cards = {name: card(name) for name in list_zoo()}
    if args.json:
        print(json.dumps({n: {**c, "path": str(resolve(n))} for n, c in cards.items()}))
        return 0
    if not cards:
        print("no zoo models bundled")
        return 0
    for name, c in cards.items():
        print(f"zoo:{name}  ({c.get('family', '?')}, {c.get('n_params', 0):,} parameters)")
        if c.get("summary"):
            print(f"  {c['summary']}")
        for key, value in c.get("scores", {}).items():
            print(f"  {key:<44} {value:.4f}")
        if c.get("command"):
            print(f"  trained by: {c['command']}  ({c.get('train_seconds', '?')} s)")
        print()
    return 0


def _train(args: argparse.Namespace) -> int:
    from circuitfind.zoo.train import train

    logging.getLogger("circuitfind").setLevel(logging.INFO)
    result = train(args.name, seed=args.seed, out=args.out, quick=args.quick, threads=args.threads)
    if args.json:
        print(json.dumps(result))
        return 0
    print(f"wrote {args.out}: " + ", ".join(f"{k}={v}" for k, v in result["scores"].items()))
    if not result["meets_targets"]:
        print(f"below target {result['targets']} (expected with --quick)")
    return 0


def register(subparsers: Any) -> None:
    """Add the ``zoo`` subcommand (``zoo list``, ``zoo train NAME --seed S --out DIR``)."""
    from circuitfind.zoo import list_zoo  # reads a directory; the recipes load on `train`

    zoo = subparsers.add_parser(
        "zoo",
        help="the bundled models trained here: list them or retrain one",
        description="Small models trained here on synthetic tasks; load one as zoo:NAME.",
    )
    sub = zoo.add_subparsers(dest="zoo_command", metavar="ACTION")
    lst = sub.add_parser("list", help="show the bundled models and their cards")
    lst.add_argument("--json", action="store_true", help="print JSON")
    lst.set_defaults(func=_list)
    tr = sub.add_parser(
        "train",
        help="retrain a zoo model (deterministic for a seed)",
        description="Train zoo model NAME and write config, weights, tokenizer and card to DIR.",
    )
    tr.add_argument(
        "name", metavar="NAME", help="a recipe; the bundled models': " + ", ".join(list_zoo())
    )
    tr.add_argument("--seed", type=int, default=0, help="training seed")
    tr.add_argument("--out", required=True, metavar="DIR", help="output directory")
    tr.add_argument("--quick", action="store_true", help="a few steps only, to test the path")
    tr.add_argument("--threads", type=int, default=1, help="CPU threads for training")
    tr.add_argument("--json", action="store_true", help="print the card as JSON")
    tr.set_defaults(func=_train)
    zoo.set_defaults(func=_list, json=False)
