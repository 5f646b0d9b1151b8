"""Supervised contrastive loss."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import torch
from torch import Tensor

from embedtune.losses.batch import BatchInfo, check_temperature, inverse_temperature


@dataclass
class SupConLoss:
    """Supervised contrastive loss (Khosla et al. 2020, "Supervised Contrastive Learning", L_out).

    The anchors are the 2B views of the batch: every query and every positive, a view's class
    being its pair's label. For anchor a with positives P(a) (all *other* views of the same
    class, so several positives per anchor) and A(a) (all other views plus the hard negatives):

        L = mean_a  -1/|P(a)| sum_{p in P(a)} log( exp(z_a . z_p / tau) / sum_{x in A(a)} exp(z_a . z_x / tau) )

    Hard negatives have no label and only ever appear in denominators. Without a label column
    each pair is its own class, which reduces to a symmetric in-batch InfoNCE over both views.

    Inputs: ``info.labels`` (batch,) from the data's label column (data.label_column).
    """

    temperature: float = 0.1

    def __post_init__(self) -> None:
        check_temperature(self.temperature)

    def __call__(self, queries: Tensor, documents: Tensor, info: BatchInfo, params: Mapping[str, Tensor] = {}) -> Tensor:
        size = queries.shape[0]
        labels = info.labels if info.labels is not None else torch.arange(size, device=queries.device)
        views = torch.cat([queries, documents[:size]])  # (2b, dim)
        view_labels = torch.cat([labels, labels])
        candidates = torch.cat([views, documents[size:]])  # (2b + b*k, dim)
        logits = views @ candidates.T * inverse_temperature(self.temperature, params)  # (2b, 2b + b*k)
        not_self = torch.ones_like(logits, dtype=torch.bool)
        not_self[:, : 2 * size].fill_diagonal_(False)
        log_probs = logits - torch.logsumexp(logits.masked_fill(~not_self, float("-inf")), dim=1, keepdim=True)
        positive = torch.zeros_like(not_self)
        positive[:, : 2 * size] = view_labels.unsqueeze(0) == view_labels.unsqueeze(1)
        positive &= not_self
        per_anchor = (log_probs * positive).sum(1) / positive.sum(1)  # every anchor has its pair's other view
        return -per_anchor.mean()
