"""Benchmark suites, in one table: ``circuitfind benchmark --suite NAME`` (alias
``python -m benchmarks``) runs them and writes their reports.

A suite is a function ``run(out_dir: Path, *, quick: bool, seed: int, **options) -> dict`` that
writes ``NAME.md`` + ``NAME.json`` (and PNG plots) under ``out_dir`` through
:class:`circuitfind.bench.common.Report` (one header format) and returns a short summary. It is
registered by one :class:`Suite` row in ``_BUILTIN`` below (or :func:`add_suite` at run time);
its module is imported only when it runs, so a suite with a missing dependency cannot break the
others. ``quick`` / ``full`` are the options the runner passes in ``--quick`` and full runs.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

from circuitfind.errors import InputError

__all__ = [
    "DEFAULT_SUITES",
    "SUITES",
    "Suite",
    "SuiteMissingError",
    "add_suite",
    "default_suites",
    "get_suite",
]

SuiteFn = Callable[..., dict[str, Any]]
"""``run(out_dir, *, quick, seed, **options) -> summary``."""


class SuiteMissingError(RuntimeError):
    """A registered suite whose module (or function) is not in this build."""


def _frozen(options: Mapping[str, Any] | None = None) -> Mapping[str, Any]:
    return MappingProxyType(dict(options or {}))


@dataclass(frozen=True)
class Suite:
    """One benchmark suite: its name, a one-line summary, its function and its options.

    ``fn`` is the function or a ``"module:function"`` string loaded when the suite runs.
    ``quick`` / ``full``: keyword options passed with ``--quick`` / in a full run. ``default``:
    part of a plain ``circuitfind benchmark`` (else it runs only when named with ``--suite``).
    """

    name: str
    summary: str
    fn: str | SuiteFn
    quick: Mapping[str, Any] = field(default_factory=_frozen)
    full: Mapping[str, Any] = field(default_factory=_frozen)
    default: bool = True

    @property
    def module(self) -> str:
        """The module the suite's function lives in."""
        if isinstance(self.fn, str):
            return self.fn.partition(":")[0]
        return str(getattr(self.fn, "__module__", ""))

    def options(self, quick: bool) -> dict[str, Any]:
        """The keyword options of a quick or a full run."""
        return dict(self.quick if quick else self.full)

    def load(self) -> SuiteFn:
        """The suite's function (its module imported now)."""
        if not isinstance(self.fn, str):
            return self.fn
        module_name, _, attr = self.fn.partition(":")
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as exc:
            if exc.name is not None and (
                module_name == exc.name or module_name.startswith(exc.name + ".")
            ):
                raise SuiteMissingError(
                    f"suite {self.name!r} is registered but its module {module_name} is not in "
                    "this build"
                ) from exc
            raise
        fn = getattr(module, attr or "run", None)
        if not callable(fn):
            raise SuiteMissingError(
                f"suite {self.name!r}: {module_name} has no {attr or 'run'}(out_dir, quick, seed)"
            )
        return fn  # type: ignore[no-any-return]


# The table. To add a suite: write circuitfind/bench/NAME.py with run(out_dir, *, quick, seed)
# and add its row here.
_BUILTIN: tuple[Suite, ...] = (
    Suite(
        "known",
        "known-circuit recovery: planted model, zoo induction",
        "circuitfind.bench.known:run",
    ),
    Suite(
        "compare",
        "method comparison on the zoo: faithfulness curves, CPR/CMD, stability over resamples",
        "circuitfind.bench.compare:run",
    ),
    Suite(
        "gpt2",
        "GPT-2 small's published IOI / Greater-Than circuits (needs GPT-2's weights; else skips)",
        "circuitfind.bench.gpt2_reference:run",
    ),
    Suite(
        "speed",
        "speed per method against HF forward/backward and peers",
        "circuitfind.bench.speed:run",
    ),
    Suite(
        "sae",
        "SAEs: do decoder rows recover the toy model's features? loss recovered on a zoo model",
        "circuitfind.bench.sae:run",
        quick=_frozen({"toy_steps": 400, "sae_steps": 400, "model_steps": 200}),
        full=_frozen({"toy_steps": 3000, "sae_steps": 2000, "model_steps": 1000}),
        default=False,
    ),
    Suite(
        "zoo",
        "the zoo's models: held-out scores, head diagnostics, single-head ablations",
        "circuitfind.bench.zoo:run",
        quick=_frozen({"models": ("induction-2l",)}),
        default=False,
    ),
    Suite(
        "agreement",
        "EAP and EAP-IG against exact patching as integration steps grow (rank agreement)",
        "circuitfind.bench.agreement:run",
        default=False,
    ),
    Suite(
        "pass-size",
        "exact patching: time per edge against the tokens a batched pass holds",
        "circuitfind.bench.pass_size:run",
        quick=_frozen({"repeat": 1}),
        full=_frozen({"repeat": 3}),
        default=False,
    ),
    Suite(
        "scale",
        "EAP / EAP-IG on an 8B-shape graph; time and peak memory of every method at real widths",
        "circuitfind.bench.scale:run",
        default=False,
    ),
)

SUITES: dict[str, Suite] = {}


def add_suite(suite: Suite) -> Suite:
    """Register ``suite``; a name (or a spelling of it with ``_``) that is taken is refused."""
    key = suite.name.replace("_", "-")
    if key != suite.name:
        raise InputError(f"suite name {suite.name!r}: spell it in kebab-case ({key!r})")
    if key in SUITES:
        raise InputError(f"benchmark suite {key!r} is already registered")
    SUITES[key] = suite
    return suite


for _suite in _BUILTIN:
    add_suite(_suite)


def default_suites() -> tuple[str, ...]:
    """The suites a plain ``circuitfind benchmark`` runs, in table order."""
    return tuple(name for name, s in SUITES.items() if s.default)


DEFAULT_SUITES: tuple[str, ...] = default_suites()


def get_suite(name: str) -> Suite:
    """The suite NAME (``_`` accepted for ``-``)."""
    key = name.replace("_", "-")
    if key not in SUITES:
        raise InputError(f"unknown benchmark suite {name!r}; choose from {', '.join(SUITES)}")
    return SUITES[key]
