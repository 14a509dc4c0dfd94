"""The speed suite's per-method pass rules, in one place: how to run each method, the floor it
is compared with (in HF forwards F and backwards B over the same batch), what the floor is per,
and issue 4's targets.

``pass_rules`` reads the method table (``circuitfind.methods.METHODS``: each ``MethodSpec``
carries ``cost``, ``floor(F, B, options)``, ``unit`` and ``options``); the only other
per-method knowledge of the suite is the extrapolators in ``measure`` (exact patching, ACDC and
node ablation over a big graph take hours, so they are timed on a sample of their passes) and
the targets below.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from functools import partial
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from circuitfind.bench.speed.cases import Case, SpeedConfig

__all__ = ["TARGETS", "PassRule", "Target", "apply_rules", "cost_text", "pass_rules", "target_text"]

Floor = Callable[[float, float, Mapping[str, Any]], float | None]
"""``floor(F, B, options) -> seconds per unit`` (None: no floor is claimed)."""


def _no_floor(F: float, B: float, options: Mapping[str, Any]) -> float | None:
    return None


@dataclass(frozen=True)
class PassRule:
    """What one method costs and how the suite runs it (the fields of the method table's
    ``MethodSpec`` that the suite reads, plus ``run``: the table's ``fn`` over prepared runs)."""

    cost: str  # the floor in words, e.g. "2F + B"; "k" stands for options["steps"]
    floor: Floor
    unit: str  # "run" | "edge" | "node": what the floor is per
    options: Mapping[str, Any] = field(default_factory=dict)
    run: Callable[[Case, Mapping[str, Any]], Any] | None = None  # one full, timed run


@dataclass(frozen=True)
class Target:
    """Issue 4's target for a method: its ratio to its floor at most ``at_most`` (run floors),
    or its speed-up over its floor at least ``at_least`` (per-edge floors)."""

    at_most: float | None = None
    at_least: float | None = None


TARGETS: dict[str, Target] = {
    "eap": Target(at_most=1.3),
    "eap-ig-inputs": Target(at_most=1.3),
    "exact": Target(at_least=4.0),
}


# ---------------------------------------------------------------------------- running a method
def prepared_runs(case: Case, batch_size: int | None = None, streaming: bool = False) -> Any:
    """Fresh prepared runs of ``case`` (resample ablation, one batch unless ``batch_size``): a
    method timed from them pays for the ablated (corrupted) pass and any clean pass it needs, as
    in a real run."""
    from circuitfind.runs import PreparedRuns

    return PreparedRuns(
        case.model,
        case.task,
        "resample",
        batch_size=batch_size or len(case.task),
        graph=case.graph,
        streaming=streaming,
    )


def method_kwargs(name: str, options: Mapping[str, Any]) -> dict[str, Any]:
    """The suite's ``options`` that method ``name`` takes (its table row's options)."""
    from circuitfind.methods import method_spec

    return {k: v for k, v in options.items() if k in method_spec(name).options}


def _run(name: str, case: Case, options: Mapping[str, Any], runs: Any = None) -> Any:
    """One full run of method ``name`` (a row of the method table) on ``case``, over ``runs``
    (default: fresh ones of one batch)."""
    from circuitfind.methods import method_spec

    kwargs = method_kwargs(name, options)
    if name == "exact":  # the pass size is exact's engine setting, not a method option
        kwargs["max_tokens_per_pass"] = options.get("max_tokens_per_pass")
    runs = prepared_runs(case) if runs is None else runs
    return method_spec(name).function()(runs, **kwargs)


def pass_rules(cfg: SpeedConfig) -> dict[str, PassRule]:
    """Every method's rule, read from the method table (``circuitfind.methods.METHODS``: its
    cost, floor, unit and options), with the suite's settings as options: ``ig_steps`` ->
    ``steps``, ``max_tokens_per_pass`` for exact, ACDC's ``tau`` 0.01."""
    from circuitfind.methods import METHODS

    settings = {"steps": cfg.ig_steps, "tau": 0.01}
    rules: dict[str, PassRule] = {}
    for name, spec in METHODS.items():
        options = {**spec.options, **{k: v for k, v in settings.items() if k in spec.options}}
        if name == "exact":
            options["max_tokens_per_pass"] = cfg.max_tokens_per_pass
        rules[name] = PassRule(
            spec.floor_text or spec.cost,
            spec.floor or _no_floor,
            spec.unit,
            options,
            partial(_run, name),
        )
    return rules


def cost_text(rule: PassRule) -> str:
    """The rule's cost with ``k`` filled in from its ``steps`` ("(k+1)F + kB" -> "6F + 5B")."""
    if "steps" not in rule.options or "k" not in rule.cost:
        return rule.cost
    k = int(rule.options["steps"])
    return rule.cost.replace("(k+1)", str(k + 1)).replace("k", str(k))


def target_text(name: str, rule: PassRule) -> str:
    """Issue 4's target of method ``name`` in words ('' when it has none)."""
    t = TARGETS.get(name)
    if t is None:
        return ""
    if t.at_most is not None:
        return f"<= {t.at_most:g} x ({cost_text(rule)})"
    return f">= {t.at_least:g} x faster than {cost_text(rule)}"


def apply_rules(
    methods: dict[str, dict[str, Any]],
    rules: Mapping[str, PassRule],
    F: float,
    FB: float,
    units: Mapping[str, int],
) -> None:
    """Add each method's ratio to the HF forward and to its floor, and its target, in place.

    ``units``: how many edges and nodes the case has (``{"run": 1, "edge": E, "node": N}``).
    Run floors give ``ratio`` (seconds / floor; <= target is met); per-edge or per-node floors
    give ``speedup`` (floor x units / seconds; >= target is met) and ``per_<unit>_s``.
    """
    B = max(FB - F, 0.0)
    for name, m in methods.items():
        s = m["seconds"]
        m["x_F"] = s / F
        rule = rules.get(name)
        if rule is None:
            continue
        n = units[rule.unit]
        if rule.unit != "run":
            m[f"per_{rule.unit}_s"] = s / n
        floor = rule.floor(F, B, rule.options)
        if floor is not None:
            m["baseline"] = cost_text(rule)
            if rule.unit == "run":
                m["ratio"] = s / floor
            else:
                m["speedup"] = floor * n / s
        t = TARGETS.get(name)
        if t is not None and floor is not None:
            value = m["ratio"] if rule.unit == "run" else m["speedup"]
            m["target_text"] = target_text(name, rule)
            if t.at_most is not None:
                m["target"], m["met"] = t.at_most, value <= t.at_most
            elif t.at_least is not None:
                m["target"], m["met"] = t.at_least, value >= t.at_least
