"""The toy model of superposition (Elhage et al. 2022): ground truth for SAEs.

``n_features`` sparse features ``x`` (each active with probability ``p``, value uniform in
[0, 1]) are stored in ``d_hidden < n_features`` dimensions as ``h = W x`` and read back as
``ReLU(Wᵀ h + b)``. Trained to reconstruct ``x``, the model packs more features than dimensions
into ``h`` (superposition) when features are sparse. The columns of ``W`` are the true feature
directions an SAE on ``h`` should recover.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

__all__ = [
    "ToyModel",
    "feature_recovery",
    "represented_features",
    "sample_features",
    "train_toy_model",
]


def sample_features(
    n: int, n_features: int, p: float, *, generator: torch.Generator | None = None
) -> Tensor:
    """[n, n_features] sparse features: each active with probability p, uniform in [0, 1]."""
    values = torch.rand(n, n_features, generator=generator)
    active = torch.rand(n, n_features, generator=generator) < p
    return values * active


class ToyModel(nn.Module):
    """``x -> ReLU(Wᵀ W x + b)`` with ``W`` [d_hidden, n_features]."""

    def __init__(self, n_features: int, d_hidden: int, *, seed: int = 0) -> None:
        super().__init__()
        gen = torch.Generator().manual_seed(seed)
        self.W = nn.Parameter(torch.randn(d_hidden, n_features, generator=gen) * 0.3)
        self.b = nn.Parameter(torch.zeros(n_features))

    def hidden(self, x: Tensor) -> Tensor:
        """[n, n_features] -> [n, d_hidden]"""
        return x @ self.W.T

    def forward(self, x: Tensor) -> Tensor:
        return torch.relu(self.hidden(x) @ self.W + self.b)

    def feature_directions(self) -> Tensor:
        """The true feature directions, unit rows: [n_features, d_hidden]."""
        w = self.W.detach().T
        return w / w.norm(dim=-1, keepdim=True).clamp(min=1e-12)


@dataclass
class ToyResult:
    model: ToyModel
    loss: float


def train_toy_model(
    n_features: int = 20,
    d_hidden: int = 5,
    p: float = 0.05,
    *,
    steps: int = 4000,
    batch_size: int = 1024,
    lr: float = 3e-3,
    seed: int = 0,
    progress: bool = False,
) -> ToyModel:
    """Train the toy model (uniform feature importance) to reconstruct sparse features."""
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed + 1)
    model = ToyModel(n_features, d_hidden, seed=seed)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    for _ in tqdm(range(steps), disable=not progress, desc="toy model"):
        x = sample_features(batch_size, n_features, p, generator=gen)
        loss = ((model(x) - x) ** 2).sum(-1).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    return model.eval()


def represented_features(model: ToyModel, threshold: float = 0.5) -> Tensor:
    """Bool [n_features]: features whose direction has norm above ``threshold`` (stored)."""
    return model.W.detach().norm(dim=0) > threshold


def feature_recovery(true_dirs: Tensor, learned: Tensor) -> Tensor:
    """For each true direction, the max cosine similarity with any learned one: [n_true].

    Args:
        true_dirs: [n_true, d] feature directions.
        learned: [n_learned, d] e.g. an SAE's decoder rows ``W_dec``.
    """
    t = true_dirs / true_dirs.norm(dim=-1, keepdim=True).clamp(min=1e-12)
    s = learned / learned.norm(dim=-1, keepdim=True).clamp(min=1e-12)
    return (t @ s.T).amax(-1)
