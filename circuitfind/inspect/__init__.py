"""Inspection tools: lenses, direct logit attribution, attention roles, probes, SAEs, steering,
input attribution. Each works on any loaded ``Model``; ``circuitfind.inspect.cli`` adds them
to the command line.

Names are imported on first use (PEP 562): importing this package (or its ``cli``) loads no
torch."""

from __future__ import annotations

import importlib
import sys
import types
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from circuitfind.inspect.attention import (
        SCORES,
        attention_patterns,
        copying_scores,
        head_pattern_scores,
        head_roles,
        pattern_scores,
        repeated_random_tokens,
    )
    from circuitfind.inspect.attribute import ATTRIBUTION_METHODS, attribute, logit_metric
    from circuitfind.inspect.dla import dla, dla_by_layer, dla_heads
    from circuitfind.inspect.lens import (
        TunedLens,
        lens_kl,
        logit_lens,
        residual_streams,
        train_tuned_lens,
    )
    from circuitfind.inspect.probe import (
        ProbeResult,
        collect_activations,
        load_labelled,
        train_probes,
    )
    from circuitfind.inspect.sae import (
        SAE,
        SAEConfig,
        evaluate_sae,
        feature_logit_effect,
        site_activations,
        splice_metrics,
        top_activations,
        train_sae,
    )
    from circuitfind.inspect.steer import (
        compare_generations,
        directional_ablation,
        generate,
        hooked,
        orthogonalize_weights,
        steering,
        steering_vector,
    )

# public name -> the submodule that defines it
_LAZY: dict[str, str] = {
    "SCORES": "attention",
    "attention_patterns": "attention",
    "copying_scores": "attention",
    "head_roles": "attention",
    "head_pattern_scores": "attention",
    "pattern_scores": "attention",
    "repeated_random_tokens": "attention",
    "ATTRIBUTION_METHODS": "attribute",
    "attribute": "attribute",
    "logit_metric": "attribute",
    "dla": "dla",
    "dla_by_layer": "dla",
    "dla_heads": "dla",
    "TunedLens": "lens",
    "lens_kl": "lens",
    "logit_lens": "lens",
    "residual_streams": "lens",
    "train_tuned_lens": "lens",
    "ProbeResult": "probe",
    "collect_activations": "probe",
    "load_labelled": "probe",
    "train_probes": "probe",
    "SAE": "sae",
    "SAEConfig": "sae",
    "evaluate_sae": "sae",
    "feature_logit_effect": "sae",
    "site_activations": "sae",
    "splice_metrics": "sae",
    "top_activations": "sae",
    "train_sae": "sae",
    "compare_generations": "steer",
    "directional_ablation": "steer",
    "generate": "steer",
    "hooked": "steer",
    "orthogonalize_weights": "steer",
    "steering": "steer",
    "steering_vector": "steer",
}

__all__ = [
    "ATTRIBUTION_METHODS",
    "SAE",
    "SCORES",
    "ProbeResult",
    "SAEConfig",
    "TunedLens",
    "attention_patterns",
    "attribute",
    "collect_activations",
    "compare_generations",
    "copying_scores",
    "directional_ablation",
    "dla",
    "dla_by_layer",
    "dla_heads",
    "evaluate_sae",
    "feature_logit_effect",
    "generate",
    "head_pattern_scores",
    "head_roles",
    "hooked",
    "lens_kl",
    "load_labelled",
    "logit_lens",
    "logit_metric",
    "orthogonalize_weights",
    "pattern_scores",
    "repeated_random_tokens",
    "residual_streams",
    "site_activations",
    "splice_metrics",
    "steering",
    "steering_vector",
    "top_activations",
    "train_probes",
    "train_sae",
    "train_tuned_lens",
]


def __getattr__(name: str) -> Any:
    """Import the submodule that defines ``name`` on first use."""
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'circuitfind.inspect' has no attribute {name!r}")
    value = getattr(importlib.import_module(f"circuitfind.inspect.{module}"), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))


class _Package(types.ModuleType):
    """Importing the submodules ``dla`` or ``attribute`` must not replace the functions of the
    same name (the import system sets the parent's attribute to the submodule)."""

    def __setattr__(self, name: str, value: Any) -> None:
        if isinstance(value, types.ModuleType) and _LAZY.get(name) == name:
            return  # the function is looked up by __getattr__ on first use
        super().__setattr__(name, value)


sys.modules[__name__].__class__ = _Package
