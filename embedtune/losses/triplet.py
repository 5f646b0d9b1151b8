"""Margin triplet loss."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import torch
from torch import Tensor

from embedtune.losses.batch import BatchInfo, split_documents

DISTANCES = ("cosine", "euclidean")


@dataclass
class TripletLoss:
    """Triplet loss (Schroff et al. 2015, FaceNet; Reimers & Gurevych 2019 for sentences).

        L = mean_{i,k} max(0, dist(q_i, d_i+) - dist(q_i, d_ik-) + margin)

    with dist = 1 - cos (``cosine``) or the Euclidean distance ||a - b|| (``euclidean``; on unit
    vectors it ranges over [0, 2]). Each query's k hard negatives form k triplets. Only the
    margin matters, not how far past it a negative is, so it is gentler than InfoNCE but sees no
    in-batch negatives: use it when the data has good hard negatives.

    Inputs: ``documents`` must hold >= 1 hard negative per query (negatives.per_query >= 1).
    """

    margin: float = 0.2
    distance: str = "cosine"

    def __post_init__(self) -> None:
        if self.distance not in DISTANCES:
            raise ValueError(f"distance must be one of {', '.join(DISTANCES)}, got {self.distance!r}")
        if self.margin < 0:
            raise ValueError(f"margin must be >= 0, got {self.margin}")

    def _distance(self, a: Tensor, b: Tensor) -> Tensor:
        if self.distance == "cosine":
            return 1 - (a * b).sum(-1)
        return (a - b).norm(dim=-1)

    def __call__(self, queries: Tensor, documents: Tensor, info: BatchInfo, params: Mapping[str, Tensor] = {}) -> Tensor:
        positives, negatives = split_documents(documents, info, "triplet")  # (b, dim), (b, k, dim)
        positive_distance = self._distance(queries, positives).unsqueeze(1)  # (b, 1)
        negative_distance = self._distance(queries.unsqueeze(1), negatives)  # (b, k)
        return torch.relu(positive_distance - negative_distance + self.margin).mean()
