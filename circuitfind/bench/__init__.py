"""Benchmark suites: ``circuitfind benchmark`` (or ``python -m benchmarks``) writes their reports.

A suite is a module with ``run(out_dir: Path, *, quick: bool, seed: int) -> dict``; it writes
``NAME.md`` + ``NAME.json`` (and PNG plots) under ``out_dir`` and returns a short summary. Suites
are imported only when they run, so one with a missing dependency cannot break the others.
"""

from __future__ import annotations

import importlib
from types import ModuleType

from circuitfind.errors import InputError

__all__ = ["DEFAULT_SUITES", "SUITES", "SuiteMissingError", "get_suite"]

SUITES: dict[str, tuple[str, str]] = {
    "known": ("circuitfind.bench.known", "known-circuit recovery: planted model, zoo induction"),
    "compare": (
        "circuitfind.bench.compare",
        "method comparison on the zoo: faithfulness curves, CPR/CMD, stability over resamples",
    ),
    "gpt2": (
        "circuitfind.bench.gpt2_reference",
        "GPT-2 small's published IOI / Greater-Than circuits (needs GPT-2's weights; else skips)",
    ),
    "speed": ("circuitfind.bench.speed", "speed per method against HF forward/backward and peers"),
}
DEFAULT_SUITES: tuple[str, ...] = ("known", "compare", "gpt2", "speed")


class SuiteMissingError(RuntimeError):
    """A registered suite whose module is not in this build."""


def get_suite(name: str) -> ModuleType:
    """The module of suite NAME (imported now)."""
    if name not in SUITES:
        raise InputError(f"unknown benchmark suite {name!r}; choose from {', '.join(SUITES)}")
    module_name = SUITES[name][0]
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if exc.name is not None and (
            module_name == exc.name or module_name.startswith(exc.name + ".")
        ):
            raise SuiteMissingError(
                f"suite {name!r} is registered but its module {module_name} is not in this build"
            ) from exc
        raise
    if not callable(getattr(module, "run", None)):
        raise SuiteMissingError(f"suite {name!r}: {module_name} has no run(out_dir, quick, seed)")
    return module
