"""Linear probes: can a label be read linearly from a layer's residual stream (or a node)?

Logistic regression (scikit-learn) per site on the activation at each prompt's readout position
(its last real token unless told otherwise), with held-out accuracy; the probe directions (unit
vectors in the residual stream, in model units) can be used as steering vectors. Sites are
``resid_pre.{L}`` for every layer and ``resid_final`` by default, or any node (``a1.h2``,
``m0``, ``input``). Labelled prompt sets are JSONL, one ``{"text": ..., "label": ...}`` a line.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import Tensor

from circuitfind.errors import InputError
from circuitfind.inspect._common import TokensLike, as_tokens, readout_positions

if TYPE_CHECKING:
    from circuitfind.model import Model

__all__ = ["ProbeResult", "collect_activations", "load_labelled", "train_probes"]


def load_labelled(path: str | Path) -> tuple[list[str], list[Any]]:
    """Prompts and labels from a JSONL file (``text`` or ``prompt``, and ``label``)."""
    texts, labels = [], []
    path = Path(path)
    if not path.is_file():
        raise InputError(f"labelled prompt file {path} does not exist")
    for n, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
            texts.append(row["text"] if "text" in row else row["prompt"])
            labels.append(row["label"])
        except (json.JSONDecodeError, KeyError, TypeError) as exc:
            raise InputError(
                f"{path}:{n}: expected a JSON object with 'text' (or 'prompt') and 'label' ({exc})"
            ) from None
    if not texts:
        raise InputError(f"{path} holds no prompts")
    return texts, labels


def default_sites(model: Model) -> list[str]:
    """``resid_pre.0 .. resid_pre.{n-1}`` and ``resid_final``."""
    return [f"resid_pre.{layer}" for layer in range(model.cfg.n_layers)] + ["resid_final"]


def collect_activations(
    model: Model,
    tokens: TokensLike,
    sites: Sequence[str] | None = None,
    *,
    attention_mask: Tensor | None = None,
    position: int | Tensor | None = None,
    batch_size: int = 64,
) -> dict[str, Tensor]:
    """Activations at each site at each row's readout position: ``{site: [batch, d_model]}``.

    Sites: ``resid_pre.{L}``, ``resid_mid.{L}``, ``resid_final``, or a node name (``input``,
    ``a{L}.h{H}``, ``m{L}``; any common spelling).
    """
    from circuitfind.names import parse_node

    ids, mask = as_tokens(model, tokens, attention_mask)
    sites = list(sites) if sites is not None else default_sites(model)
    out: dict[str, list[Tensor]] = {s: [] for s in sites}
    for start in range(0, ids.shape[0], batch_size):
        b_ids = ids[start : start + batch_size]
        b_mask = mask[start : start + batch_size] if mask is not None else None
        b_pos = position[start : start + batch_size] if isinstance(position, Tensor) else position
        pos = readout_positions(b_ids, b_mask, b_pos)
        rows = torch.arange(b_ids.shape[0], device=b_ids.device)
        with torch.no_grad():
            _, cache = model.run_with_cache(b_ids, b_mask)
        for site in sites:
            if site == "resid_final":
                act = cache.resid_final
            elif site.startswith(("resid_pre.", "resid_mid.")):
                kind, layer = site.split(".")
                streams = cache.resid_pre if kind == "resid_pre" else cache.resid_mid
                if not streams or int(layer) >= len(streams):
                    raise InputError(f"site {site!r} does not exist in this model")
                act = streams[int(layer)]
            else:
                act = cache[parse_node(site, model.cfg)]
            assert act is not None
            out[site].append(act[rows, pos].float().cpu())
    return {s: torch.cat(v) for s, v in out.items()}


@dataclass
class ProbeResult:
    """Per-site probe accuracies and directions."""

    sites: list[str]
    classes: list[Any]
    train_accuracy: dict[str, float]
    test_accuracy: dict[str, float]
    chance: float  # accuracy of always predicting the majority class on the test split
    directions: dict[str, Tensor] = field(repr=False)  # site -> [n_dirs, d_model] unit rows
    probes: dict[str, Any] = field(default_factory=dict, repr=False)

    def best_site(self) -> str:
        return max(self.sites, key=lambda s: self.test_accuracy[s])

    def direction(self, site: str | None = None, cls: int = 0) -> Tensor:
        """A unit probe direction [d_model] (binary: towards the second class)."""
        return self.directions[site or self.best_site()][cls]

    def to_dict(self) -> dict[str, Any]:
        return {
            "sites": self.sites,
            "classes": [str(c) for c in self.classes],
            "train_accuracy": self.train_accuracy,
            "test_accuracy": self.test_accuracy,
            "chance": self.chance,
            "best_site": self.best_site(),
        }


def train_probes(
    model: Model,
    tokens: TokensLike,
    labels: Sequence[Any],
    *,
    sites: Sequence[str] | None = None,
    attention_mask: Tensor | None = None,
    position: int | Tensor | None = None,
    test_fraction: float = 0.25,
    C: float = 1.0,
    seed: int = 0,
) -> ProbeResult:
    """Train one logistic-regression probe per site and report held-out accuracy.

    Args:
        model: the model.
        tokens: prompts (text or ids [batch, pos]).
        labels: one label per prompt (any hashable).
        sites: where to probe (default: every layer's residual stream and the final one).
        attention_mask, position: for padded batches / another readout position.
        test_fraction: share of prompts held out (stratified split).
        C: inverse L2 regularisation strength.
        seed: for the split.
    """
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import train_test_split
    from sklearn.preprocessing import StandardScaler

    ids, mask = as_tokens(model, tokens, attention_mask)
    y_raw = list(labels)
    if len(y_raw) != ids.shape[0]:
        raise InputError(f"{len(y_raw)} labels for {ids.shape[0]} prompts; give one per prompt")
    classes = sorted(set(y_raw), key=str)
    if len(classes) < 2:
        raise InputError("probing needs at least two distinct labels")
    y = np.array([classes.index(v) for v in y_raw])
    acts = collect_activations(model, ids, sites, attention_mask=mask, position=position)
    index = np.arange(len(y))
    counts = np.bincount(y)
    stratify = y if counts.min() >= 2 else None
    train_idx, test_idx = train_test_split(
        index, test_size=test_fraction, random_state=seed, stratify=stratify
    )
    majority = np.bincount(y[train_idx], minlength=len(classes)).argmax()
    chance = float((y[test_idx] == majority).mean())
    result = ProbeResult(list(acts), classes, {}, {}, chance, {})
    for site, a in acts.items():
        x = a.numpy().astype(np.float64)
        scaler = StandardScaler().fit(x[train_idx])
        clf = LogisticRegression(C=C, max_iter=2000)
        clf.fit(scaler.transform(x[train_idx]), y[train_idx])
        result.train_accuracy[site] = float(clf.score(scaler.transform(x[train_idx]), y[train_idx]))
        result.test_accuracy[site] = float(clf.score(scaler.transform(x[test_idx]), y[test_idx]))
        # back to model units: w·(x − μ)/σ  ->  direction w/σ
        w = torch.as_tensor(clf.coef_ / scaler.scale_, dtype=torch.float32)
        result.directions[site] = w / w.norm(dim=-1, keepdim=True).clamp(min=1e-12)
        result.probes[site] = (scaler, clf)
    return result
