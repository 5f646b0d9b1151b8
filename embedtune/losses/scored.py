"""Regression-style losses for pairs with gold similarity scores (STS-B style data)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from embedtune.losses.batch import BatchInfo, check_temperature, inverse_temperature, require

SCORES = "gold scores (set data.score_column)"


def _pair_cosines(queries: Tensor, documents: Tensor) -> Tensor:
    return (queries * documents[: queries.shape[0]]).sum(-1)  # (batch,)


@dataclass
class CoSENT:
    """CoSENT (Su 2022; used by sentence-transformers' CoSENTLoss and AnglE).

        L = log( 1 + sum_{(i, j): y_i > y_j} exp( (cos_j - cos_i) / tau ) )

    over all ordered pairs of the batch whose gold scores y differ: it only asks that pairs with
    higher gold scores get higher cosines, so the score's scale and range do not matter.
    tau = 0.05 is the usual scale of 20.

    Inputs: rows of (sentence1 -> query, sentence2 -> positive, score); no hard negatives needed.
    """

    temperature: float = 0.05

    def __post_init__(self) -> None:
        check_temperature(self.temperature)

    def __call__(self, queries: Tensor, documents: Tensor, info: BatchInfo, params: Mapping[str, Tensor] = {}) -> Tensor:
        gold = require(info.scores, "cosent", SCORES)
        cosines = _pair_cosines(queries, documents) * inverse_temperature(self.temperature, params)
        differences = cosines.unsqueeze(0) - cosines.unsqueeze(1)  # [i, j] = cos_j - cos_i
        ordered = gold.unsqueeze(1) > gold.unsqueeze(0)  # [i, j]: y_i > y_j
        terms = differences.masked_fill(~ordered, float("-inf")).flatten()
        return torch.logsumexp(torch.cat([terms.new_zeros(1), terms]), dim=0)


@dataclass
class CosineRegression:
    """Cosine similarity regression (sentence-transformers' CosineSimilarityLoss):

        L = mean_i ( cos(q_i, d_i+) - (y_i - score_min) / (score_max - score_min) )^2

    The gold score is rescaled from [score_min, score_max] to [0, 1] (STS-B: 0..5).
    """

    score_min: float = 0.0
    score_max: float = 5.0

    def __post_init__(self) -> None:
        if not self.score_max > self.score_min:
            raise ValueError(f"score_max must be > score_min, got {self.score_min}..{self.score_max}")

    def __call__(self, queries: Tensor, documents: Tensor, info: BatchInfo, params: Mapping[str, Tensor] = {}) -> Tensor:
        gold = require(info.scores, "cosine", SCORES)
        target = (gold - self.score_min) / (self.score_max - self.score_min)
        return F.mse_loss(_pair_cosines(queries, documents), target.to(queries.dtype))
