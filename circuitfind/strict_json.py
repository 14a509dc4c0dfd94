"""Strict JSON: ``null`` for NaN and infinities, never the bare ``NaN`` that strict parsers
(JavaScript's ``JSON.parse``, ``jq``, Go, Rust) reject."""

from __future__ import annotations

import json
import math
from typing import Any

__all__ = ["dumps", "to_jsonable"]


def to_jsonable(obj: Any) -> Any:
    """``obj`` with every non-finite float (also inside dicts, lists, tuples, numpy and torch
    scalars) replaced by ``None``; numpy/torch scalars become Python numbers."""
    if isinstance(obj, bool) or obj is None or isinstance(obj, (int, str)):
        return obj
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {str(k) if not isinstance(k, str) else k: to_jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [to_jsonable(v) for v in obj]
    item = getattr(obj, "item", None)  # numpy / torch scalars
    if callable(item) and getattr(obj, "ndim", 0) == 0:
        return to_jsonable(item())
    tolist = getattr(obj, "tolist", None)  # arrays and tensors
    if callable(tolist):
        return to_jsonable(tolist())
    return obj


def dumps(obj: Any, **kwargs: Any) -> str:
    """``json.dumps`` of :func:`to_jsonable` (``obj``) with ``allow_nan=False``."""
    return json.dumps(to_jsonable(obj), allow_nan=False, **kwargs)
