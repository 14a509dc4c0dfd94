"""Family adapters: where each part of a Hugging Face model lives, keyed by ``config.model_type``.

An adapter takes the HF ``PreTrainedModel`` and returns the family-independent ``ModelConfig``
and ``ModelWeights`` (views of the HF parameters). Adding a family is adding one module that
calls ``register``; the registry refuses duplicates and an unknown family is an error that
names the supported ones.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import fields
from typing import Any

from torch import Tensor

from circuitfind.errors import UnsupportedModelError
from circuitfind.records import ModelConfig, ModelWeights

__all__ = ["Adapter", "adapt", "register", "supported_families"]

Adapter = Callable[[Any], tuple[ModelConfig, ModelWeights]]
_REGISTRY: dict[str, Adapter] = {}


def register(*model_types: str) -> Callable[[Adapter], Adapter]:
    """Register an adapter for one or more ``config.model_type`` values."""

    def deco(fn: Adapter) -> Adapter:
        for model_type in model_types:
            if model_type in _REGISTRY:
                raise ValueError(f"an adapter for {model_type!r} is already registered")
            _REGISTRY[model_type] = fn
        return fn

    return deco


def supported_families() -> list[str]:
    _load_builtin()
    return sorted(_REGISTRY)


def adapt(hf_model: Any) -> tuple[ModelConfig, ModelWeights]:
    """Convert a HF causal LM into the canonical config and weights."""
    _load_builtin()
    model_type = getattr(hf_model.config, "model_type", None)
    if model_type not in _REGISTRY:
        raise UnsupportedModelError(
            f"model family {model_type!r} is not supported; supported families: "
            f"{', '.join(sorted(_REGISTRY))}"
        )
    cfg, weights = _REGISTRY[model_type](hf_model)
    _alias_weights(weights)
    return cfg, weights


def _alias(t: Tensor) -> Tensor:
    """The same memory as ``t``, outside autograd: never a copy, never a grad-tracking view."""
    base = t._base if t._base is not None else t
    return base.detach().as_strided(t.size(), t.stride(), t.storage_offset())


def _alias_weights(weights: ModelWeights) -> None:
    """Replace every weight by a detached alias of the HF parameter it views.

    Views made from parameters would either track gradients (wasting memory in every backward
    and accumulating into the HF model's .grad) or, made under no_grad, refuse to be used after
    the HF parameters are edited in place (steering, orthogonalisation).
    """
    owners: list[Any] = [weights, *weights.layers]
    for owner in owners:
        for f in fields(owner):
            value = getattr(owner, f.name)
            if isinstance(value, Tensor):
                setattr(owner, f.name, _alias(value))


def _load_builtin() -> None:
    from circuitfind.families import gemma, gpt2, gpt_neo, gpt_neox, gptj, llama, olmo2, phi3, qwen3  # noqa: F401
