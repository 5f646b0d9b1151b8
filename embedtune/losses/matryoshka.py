"""Matryoshka representation learning: any loss, applied to nested prefixes of the embedding."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

import torch.nn.functional as F
from torch import Tensor

from embedtune.losses.batch import BatchInfo


@dataclass
class Matryoshka:
    """Matryoshka loss (Kusupati et al. 2022, "Matryoshka Representation Learning").

        L = sum_m w_m * loss( normalize(q[:, :d_m]), normalize(d[:, :d_m]) )

    Each prefix of the embedding is trained to work on its own, so at inference a user can keep
    only the first d_m dimensions (re-normalised) and trade quality for memory. Wraps any loss
    of this package unchanged: the wrapped loss just sees shorter unit vectors.

    Args:
        loss: the loss to apply at every dimension.
        dims: prefix lengths, e.g. [384, 256, 128, 64].
        weights: one per dim (default: all 1, as in sentence-transformers' MatryoshkaLoss).
    """

    loss: Callable
    dims: list[int]
    weights: list[float] = field(default_factory=list)

    def __post_init__(self) -> None:
        if not self.dims or any(not isinstance(d, int) or d < 1 for d in self.dims):
            raise ValueError(f"dims must be positive integers, got {self.dims}")
        self.weights = list(self.weights) or [1.0] * len(self.dims)
        if len(self.weights) != len(self.dims):
            raise ValueError(f"weights must have one value per dim ({len(self.dims)}), got {len(self.weights)}")

    def __call__(self, queries: Tensor, documents: Tensor, info: BatchInfo | None = None, params: Mapping[str, Tensor] = {}) -> Tensor:
        total = 0.0
        for dim, weight in zip(self.dims, self.weights):
            total = total + weight * self.loss(F.normalize(queries[:, :dim], dim=-1), F.normalize(documents[:, :dim], dim=-1), info, params)
        return total
