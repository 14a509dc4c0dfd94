"""Inspection tools: lenses, direct logit attribution, attention roles, probes, SAEs, steering,
input attribution. Each works on any loaded ``Model``."""

from circuitfind.inspect.attention import (
    attention_patterns,
    copying_scores,
    head_roles,
    head_scores,
    pattern_scores,
    repeated_random_tokens,
)
from circuitfind.inspect.dla import dla, dla_by_layer, dla_heads
from circuitfind.inspect.lens import (
    TunedLens,
    lens_kl,
    logit_lens,
    residual_streams,
    train_tuned_lens,
)

__all__ = [
    "TunedLens",
    "attention_patterns",
    "copying_scores",
    "dla",
    "dla_by_layer",
    "dla_heads",
    "head_roles",
    "head_scores",
    "lens_kl",
    "logit_lens",
    "pattern_scores",
    "repeated_random_tokens",
    "residual_streams",
    "train_tuned_lens",
]
