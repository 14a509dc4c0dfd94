"""The zoo: small models trained here on synthetic tasks, shipped inside the package.

``resolve(NAME)`` is the directory of ``zoo:NAME`` (loadable by ``AutoModelForCausalLM`` and
``AutoTokenizer``); ``card(NAME)`` its model card; ``load_hf(NAME)`` the plain Hugging Face model
and tokenizer; ``circuitfind.zoo.train.train`` retrains one.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from circuitfind.errors import ModelLoadError

ZOO_DIR = Path(__file__).parent / "models"

__all__ = ["ZOO_DIR", "card", "list_zoo", "load_hf", "resolve"]


def list_zoo() -> list[str]:
    """Names of the bundled zoo models."""
    if not ZOO_DIR.is_dir():
        return []
    return sorted(p.name for p in ZOO_DIR.iterdir() if (p / "config.json").is_file())


def resolve(name: str) -> Path:
    """The directory of zoo model NAME (``zoo:NAME`` as a model source)."""
    name = name.removeprefix("zoo:")
    path = ZOO_DIR / name
    if not (path / "config.json").is_file():
        known = ", ".join(list_zoo()) or "none bundled"
        raise ModelLoadError(f"unknown zoo model {name!r}; the zoo has: {known}")
    return path


def card(name: str) -> dict[str, Any]:
    """The model card of zoo model NAME (scores, training command, data recipe, time)."""
    path = resolve(name) / "card.json"
    if not path.is_file():
        return {"name": name}
    return dict(json.loads(path.read_text()))


def load_hf(name: str) -> tuple[Any, Any]:
    """Zoo model NAME as a plain Hugging Face model (eager attention, eval mode) + tokenizer."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = resolve(name)
    model = AutoModelForCausalLM.from_pretrained(path, attn_implementation="eager").eval()
    return model, AutoTokenizer.from_pretrained(path)
