"""InfoNCE with in-batch and hard negatives."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from embedtune.losses.batch import BatchInfo, check_temperature, inverse_temperature


@dataclass
class InfoNCE:
    """InfoNCE / multiple-negatives ranking loss (MNRL) with in-batch and hard negatives.

    For query i with positive d_i+ and candidate set D (all positives of the batch, then all hard
    negatives), with cosine similarity s and temperature tau:

        L_i = -log( exp(s(q_i, d_i+) / tau) / sum_{d in D} exp(s(q_i, d) / tau) )

    and the loss is the mean over the batch. Every other query's positive is a free negative
    (in-batch negatives, as in DPR, Karpukhin et al. 2020; CLIP, Radford et al. 2021); hard
    negatives from the data sharpen the boundary (E5, Wang et al. 2022). Also known as the
    SimCSE loss (Gao et al. 2021) and sentence-transformers' MultipleNegativesRankingLoss.

    With ``symmetric=True`` the document-to-query direction is added and the two are averaged
    (CLIP-style): L = (L_q->d + L_d->q) / 2, where L_d->q ranks each positive document against
    all queries of the batch.

    Args:
        temperature: tau > 0. Lower sharpens the softmax; 0.01-0.05 is usual for cosine scores
            (0.05 = sentence-transformers' scale 20). Ignored when the temperature is learnable.
        symmetric: add the document-to-query term.

    Inputs: ``queries`` (batch, dim), ``documents`` (batch * (1 + k), dim), positives first.
    """

    temperature: float = 0.05
    symmetric: bool = False

    def __post_init__(self) -> None:
        check_temperature(self.temperature)

    def __call__(self, queries: Tensor, documents: Tensor, info: BatchInfo | None = None, params: Mapping[str, Tensor] = {}) -> Tensor:
        size = queries.shape[0]
        labels = torch.arange(size, device=queries.device)
        scores = queries @ documents.T * inverse_temperature(self.temperature, params)  # (batch, batch * (1 + k))
        loss = F.cross_entropy(scores, labels)
        if self.symmetric:
            loss = (loss + F.cross_entropy(scores[:, :size].T, labels)) / 2
        return loss
