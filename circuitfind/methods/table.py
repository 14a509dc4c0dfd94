"""The method table: every scoring method is one row here and one module beside this one.

This module imports no torch, so the command line can build its choices and help from the table
in a few milliseconds. A row names its function as ``"module:function"`` (or holds the callable
itself, for methods registered at run time); the function is imported on first use.

Every method function has one signature and returns one type::

    fn(runs: circuitfind.runs.PreparedRuns, **options) -> circuitfind.scores.Scores

``options`` are the row's ``options`` (defaults filled in by :func:`method_options`). The
prepared runs hold the model, graph, task, ablation and, per batch, the clean cache, the ablated
sender outputs and the clean readout logits (built once, shared with pruning and evaluation).

Adding a method: write ``circuitfind/methods/NAME.py`` with the function, and add one
``MethodSpec`` to ``_BUILTIN`` below (or call :func:`register` at run time). The CLI's
``--method`` choices and help, the README's methods table (checked by a test) and the speed
suite's floors all read this table.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from circuitfind.vocab import choose

__all__ = [
    "METHODS",
    "MethodSpec",
    "Orientation",
    "markdown_table",
    "method_name",
    "method_options",
    "method_spec",
    "register",
    "unregister",
]

Orientation = Literal["ablated-minus-clean", "helps-positive"]
"""How a method's score points: ``ablated-minus-clean`` is metric(edge ablated) - metric(clean)
(exact patching, EAP, EAP-IG: its sign depends on the metric's direction); ``helps-positive`` is
already larger for edges that help (node-ablation magnitudes, ACDC's KL increase). See
:func:`circuitfind.scores.orientation` for the one rule that turns either into helpfulness."""

Floor = Callable[[float, float, Mapping[str, Any]], float]
"""(F, B, options) -> the method's floor in seconds: F is one bare forward over the task's
prompts, B one backward. The speed suite times each method against it."""


@dataclass(frozen=True)
class MethodSpec:
    """One row of the method table.

    Attributes:
        name: canonical name, kebab-case (``eap-ig-inputs``).
        summary: one line: what the method computes.
        fn: the method function, or ``"module:function"`` imported on first use.
        aliases: other accepted spellings (``eap_ig`` and ``EAP-IG`` are matched by the
            normaliser already; list real alternatives such as ``patching``).
        level: ``edge`` (scores every edge) or ``node`` (scores nodes; edges inherit them).
        prunes: True when the method chooses its circuit itself (ACDC); pruning options are
            then ignored.
        orientation: how its score points (:data:`Orientation`).
        options: option name -> default; the CLI exposes each as a flag of the same name.
        option_help: option name -> one-line help text.
        cost: the cost in passes, in words (the README's methods table).
        floor: (F, B, options) -> seconds, the physical floor the speed suite compares with,
            per ``unit``; None when none is claimed (ACDC and node ablation are compared with
            their peers instead).
        floor_text: the floor as a formula (``2F + B``; ``k`` stands for ``steps``).
        unit: what ``floor`` is per: ``run`` (all edges at once), ``edge`` or ``node``.
        memory: ``"module:function"`` giving the method's peak-memory terms for the memory
            plan (:mod:`circuitfind.plan`); empty when none is declared.
        streams: True when the method reads each batch's prepared runs once (one pass a
            batch) and releases it (``PreparedRuns.done_with``): the memory plan may then
            stream the prepared runs (one batch's values alive at a time).
    """

    name: str
    summary: str
    fn: Callable[..., Any] | str
    aliases: tuple[str, ...] = ()
    level: Literal["edge", "node"] = "edge"
    prunes: bool = False
    orientation: Orientation = "ablated-minus-clean"
    options: Mapping[str, Any] = field(default_factory=dict)
    option_help: Mapping[str, str] = field(default_factory=dict)
    cost: str = ""
    floor: Floor | None = None
    floor_text: str = ""
    unit: Literal["run", "edge", "node"] = "run"
    memory: str = ""
    streams: bool = False

    def function(self) -> Callable[..., Any]:
        """The method function (imported on first use)."""
        if callable(self.fn):
            return self.fn
        module, _, attr = self.fn.partition(":")
        return getattr(importlib.import_module(module), attr)  # type: ignore[no-any-return]


def _eap_ig_floor(F: float, B: float, options: Mapping[str, Any]) -> float:
    return int(options.get("steps", 5)) * (F + B) + F


_STEPS_HELP = "integrated-gradient steps"
_BUILTIN: tuple[MethodSpec, ...] = (
    MethodSpec(
        name="exact",
        summary="metric(edge ablated) - metric(clean) for every edge, by real patched runs",
        fn="circuitfind.methods.exact:score_exact",
        memory="circuitfind.plan_terms:exact_terms",
        aliases=("patching", "activation-patching", "edge-patching"),
        cost="one partial forward per edge, batched; checkpoints and resumes",
        floor=lambda F, B, o: F,
        floor_text="one F per edge",
        unit="edge",
    ),
    MethodSpec(
        name="acdc",
        summary="Conmy et al.'s iterative pruning (KL by default, threshold tau)",
        fn="circuitfind.methods.acdc:score_acdc",
        memory="circuitfind.plan_terms:acdc_terms",
        prunes=True,
        orientation="helps-positive",
        options={"tau": 0.01, "acdc_metric": "kl"},
        option_help={
            "tau": "ACDC's threshold on the metric change",
            "acdc_metric": "what ACDC measures: kl (to the clean run) or task (the task metric)",
        },
        cost="one partial forward per edge tried, sequential; checkpoints and resumes",
        unit="edge",
    ),
    MethodSpec(
        name="eap",
        summary="(ablated - clean sender output) . d metric / d(receiver input)",
        fn="circuitfind.methods.eap:score_eap",
        memory="circuitfind.plan_terms:eap_terms",
        streams=True,
        aliases=("attribution-patching",),
        cost="2 forwards + 1 backward for all edges",
        floor=lambda F, B, o: 2 * F + B,
        floor_text="2F + B",
    ),
    MethodSpec(
        name="eap-ig-inputs",
        summary="EAP with integrated gradients over the input embeddings",
        fn="circuitfind.methods.eap:score_eap_ig_inputs",
        memory="circuitfind.plan_terms:eap_ig_inputs_terms",
        streams=True,
        aliases=("eap-ig", "eapig", "eap-ig-input"),
        options={"steps": 5},
        option_help={"steps": _STEPS_HELP},
        cost="k(F + B) + F",
        floor=_eap_ig_floor,
        floor_text="(k+1)F + kB",
    ),
    MethodSpec(
        name="eap-ig-activations",
        summary="EAP-IG interpolating every node's activations",
        fn="circuitfind.methods.eap:score_eap_ig_activations",
        memory="circuitfind.plan_terms:eap_ig_activations_terms",
        streams=True,
        aliases=("eap-ig-acts", "eap-ig-activation"),
        options={"steps": 5},
        option_help={"steps": _STEPS_HELP},
        cost="k(F + B) + F",
        floor=_eap_ig_floor,
        floor_text="(k+1)F + kB",
    ),
    MethodSpec(
        name="node",
        summary="node (head / MLP) ablation",
        fn="circuitfind.methods.node:score_nodes",
        memory="circuitfind.plan_terms:masked_terms",
        aliases=("node-ablation",),
        level="node",
        orientation="helps-positive",
        cost="one partial forward per node",
        unit="node",
    ),
    MethodSpec(
        name="edge-pruning",
        summary="Bhaskar et al.'s Edge Pruning: hard-concrete edge masks trained to match the "
        "full model at a target sparsity",
        fn="circuitfind.methods.masks:score_edge_pruning",
        aliases=("edge-pruning-masks", "hard-concrete"),
        orientation="helps-positive",
        options={
            "train_steps": 200,
            "lr": 0.3,
            "target_sparsity": 0.95,
            "ramp": 0.5,
            "objective": "kl",
            "init": "none",
            "init_logit": 2.0,
            "mask_seed": 0,
        },
        option_help={
            "train_steps": "mask training steps",
            "lr": "mask learning rate (Adam; ugs's default is 0.1)",
            "target_sparsity": "fraction of edges Edge Pruning removes (ramped up linearly)",
            "ramp": "fraction of the steps over which the target sparsity ramps up",
            "objective": "what the mask matches: kl (to the clean run) or task (the metric)",
            "init": "warm-start the mask logits from this method's scores (none: cold start)",
            "init_logit": "starting mask logit (a warm start spans 0 .. 2 x init_logit by rank)",
            "mask_seed": "seed of the mask sampling noise",
        },
        cost="train-steps x (F + B) (+ the init method's); checkpoints and resumes",
        floor=lambda F, B, o: int(o.get("train_steps", 200)) * (F + B),
        floor_text="k(F + B)",
        memory="circuitfind.plan_terms:mask_terms",
    ),
    MethodSpec(
        name="ugs",
        summary="uniform gradient sampling (Li & Janson; MIB's baseline): sampled edge masks "
        "with an L0 penalty",
        fn="circuitfind.methods.masks:score_ugs",
        aliases=("uniform-gradient-sampling",),
        orientation="helps-positive",
        options={
            "train_steps": 200,
            "lr": 0.1,
            "mask_lambda": 1.0,
            "objective": "kl",
            "init": "none",
            "init_logit": 2.0,
            "mask_seed": 0,
        },
        option_help={
            "train_steps": "mask training steps",
            "lr": "mask learning rate (Adam)",
            "mask_lambda": "UGS's penalty on the expected fraction of edges kept",
            "objective": "what the mask matches: kl (to the clean run) or task (the metric)",
            "init": "warm-start the mask logits from this method's scores (none: cold start)",
            "init_logit": "starting mask logit (a warm start spans 0 .. 2 x init_logit by rank)",
            "mask_seed": "seed of the mask sampling noise",
        },
        cost="train-steps x (F + B) (+ the init method's); checkpoints and resumes",
        floor=lambda F, B, o: int(o.get("train_steps", 200)) * (F + B),
        floor_text="k(F + B)",
        memory="circuitfind.plan_terms:mask_terms",
    ),
)

METHODS: dict[str, MethodSpec] = {}
_ALIASES: dict[str, str] = {}


def register(spec: MethodSpec, *, replace: bool = False) -> MethodSpec:
    """Add a method to the table; a name or alias already taken is an error unless
    ``replace``. Returns ``spec``."""
    from circuitfind.errors import InputError

    taken = {spec.name, *spec.aliases}
    if not replace:
        clash = sorted(n for n in taken if n in METHODS or n in _ALIASES)
        if clash:
            raise InputError(f"method name(s) {', '.join(clash)} already registered")
    if spec.name != spec.name.lower().replace("_", "-"):
        raise InputError(f"method names are kebab-case; got {spec.name!r}")
    METHODS[spec.name] = spec
    for alias in spec.aliases:
        _ALIASES[alias] = spec.name
    return spec


def unregister(name: str) -> None:
    """Remove a method (tests that register toy methods clean up with this)."""
    spec = METHODS.pop(name)
    for alias in spec.aliases:
        _ALIASES.pop(alias, None)


def method_name(method: str) -> str:
    """The canonical name of a method from any common spelling (``eap_ig``, ``EAP-IG``,
    ``patching``); an unknown one is an error naming the choices."""
    return choose(method, METHODS, _ALIASES, "method", " (eap-ig = eap-ig-inputs)")


def method_spec(method: str | MethodSpec) -> MethodSpec:
    """The table row of a method, by any spelling."""
    if isinstance(method, MethodSpec):
        return method
    return METHODS[method_name(method)]


def method_options(spec: MethodSpec, given: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The method's options: its defaults updated with the ``given`` ones that it takes
    (``None`` values mean "default"). An option that another method takes is ignored (so one
    call can loop over methods); one that no method takes is an error naming this method's."""
    from circuitfind.errors import InputError

    out = dict(spec.options)
    known = {name for other in METHODS.values() for name in other.options}
    for key, value in (given or {}).items():
        if value is None:
            continue
        if key in spec.options:
            out[key] = value
        elif key not in known:
            takes = ", ".join(spec.options) or "none"
            raise InputError(f"method {spec.name!r} takes no option {key!r} (it takes: {takes})")
    return out


def markdown_table() -> str:
    """The README's methods table, from the table itself (a test keeps the README in step)."""
    lines = ["| method | what it computes | cost |", "| --- | --- | --- |"]
    for spec in METHODS.values():
        lines.append(f"| `{spec.name}` | {spec.summary} | {spec.cost} |")
    return "\n".join(lines)


for _spec in _BUILTIN:
    register(_spec)
