"""Pairwise sigmoid loss (SigLIP)."""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from embedtune.losses.batch import BatchInfo, check_temperature, inverse_temperature


@dataclass
class SigmoidLoss:
    """Sigmoid loss for pairs (Zhai et al. 2023, "Sigmoid Loss for Language Image Pre-Training").

    Every (query, document) pair of the batch is an independent binary problem:

        logit_ij = s(q_i, d_j) / tau + b,   z_ij = +1 if d_j is q_i's positive else -1
        L = -1/B sum_i sum_j log sigmoid(z_ij * logit_ij)

    over all documents (positives and hard negatives). No softmax across the batch, so no
    all-to-all normalisation is needed; the learnable bias b (initialised at ``bias_init`` = -10,
    as in the paper) absorbs the heavy imbalance of one positive against many negatives. The
    bias lives on the model as the learnable ``sigmoid_bias`` and is saved with it.

    Args:
        temperature: tau (the paper learns 1/tau from an init of 10, i.e. tau = 0.1; pick
            ``temperature=learnable`` to learn it too).
        bias_init: initial value of the learnable bias.
    """

    temperature: float = 0.1
    bias_init: float = -10.0

    def __post_init__(self) -> None:
        check_temperature(self.temperature)
        if not math.isfinite(self.bias_init):
            raise ValueError(f"bias_init must be finite, got {self.bias_init}")

    def initial_params(self) -> dict[str, float]:
        return {"sigmoid_bias": self.bias_init}

    def __call__(self, queries: Tensor, documents: Tensor, info: BatchInfo | None = None, params: Mapping[str, Tensor] = {}) -> Tensor:
        size = queries.shape[0]
        bias = params["sigmoid_bias"] if "sigmoid_bias" in params else self.bias_init
        logits = queries @ documents.T * inverse_temperature(self.temperature, params) + bias  # (b, n_docs)
        signs = -torch.ones_like(logits)
        signs[torch.arange(size), torch.arange(size)] = 1.0
        return -F.logsigmoid(signs * logits).sum() / size
