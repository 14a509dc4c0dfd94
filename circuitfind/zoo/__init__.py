"""The zoo: small models trained here on synthetic tasks, shipped inside the package."""

from __future__ import annotations

from pathlib import Path

from circuitfind.errors import ModelLoadError

ZOO_DIR = Path(__file__).parent / "models"

__all__ = ["ZOO_DIR", "list_zoo", "resolve"]


def list_zoo() -> list[str]:
    """Names of the bundled zoo models."""
    if not ZOO_DIR.is_dir():
        return []
    return sorted(p.name for p in ZOO_DIR.iterdir() if (p / "config.json").is_file())


def resolve(name: str) -> Path:
    """The directory of zoo model NAME (``zoo:NAME`` as a model source)."""
    path = ZOO_DIR / name
    if not (path / "config.json").is_file():
        known = ", ".join(list_zoo()) or "none bundled"
        raise ModelLoadError(f"unknown zoo model {name!r}; the zoo has: {known}")
    return path
