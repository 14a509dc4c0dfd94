"""Inspection tools: lenses, direct logit attribution, attention roles, probes, SAEs, steering,
input attribution. Each works on any loaded ``Model``; ``circuitfind.inspect.cli`` adds them
to the command line."""

from circuitfind.inspect.attention import (
    SCORES,
    attention_patterns,
    copying_scores,
    head_pattern_scores,
    head_roles,
    pattern_scores,
    repeated_random_tokens,
)
from circuitfind.inspect.attribute import METHODS, attribute, logit_metric
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

__all__ = [
    "METHODS",
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
