"""Distillation from teacher scores carried in the data (e.g. a cross-encoder's, or the mining
model's scores written by `embedtune mine`)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from embedtune.losses.batch import BatchInfo, check_temperature, inverse_temperature, require, split_documents


def _candidate_scores(queries: Tensor, documents: Tensor, info: BatchInfo, loss_name: str) -> Tensor:
    """Student cosine scores of each query's own candidates: (batch, 1 + k), positive first."""
    positives, negatives = split_documents(documents, info, loss_name)
    candidates = torch.cat([positives.unsqueeze(1), negatives], dim=1)  # (b, 1 + k, dim)
    return (queries.unsqueeze(1) * candidates).sum(-1)


@dataclass
class MarginMSE:
    """Margin-MSE (Hofstätter et al. 2020, "Improving Efficient Neural Ranking Models with
    Cross-Architecture Knowledge Distillation").

        L = mean_{i,k} ( (s(q_i, d_i+) - s(q_i, d_ik-)) - (t_i+ - t_ik-) )^2

    The student matches the teacher's *margins*, not its raw scores, so teacher and student may
    live on different scales (a cross-encoder's logits vs cosines).

    Inputs: >= 1 hard negative per query and teacher scores (positive, then negatives) per row.
    """

    def __call__(self, queries: Tensor, documents: Tensor, info: BatchInfo, params: Mapping[str, Tensor] = {}) -> Tensor:
        student = _candidate_scores(queries, documents, info, "margin_mse")  # (b, 1 + k)
        teacher = require(info.teacher_scores, "margin_mse", "teacher scores (positive_score and negative_scores columns)")
        student_margin = student[:, :1] - student[:, 1:]
        teacher_margin = teacher[:, :1] - teacher[:, 1:]
        return F.mse_loss(student_margin, teacher_margin.to(student_margin.dtype))


@dataclass
class KLDistill:
    """KL distillation over each query's candidate list (RocketQAv2, Ren et al. 2021; as used in
    BGE-M3 and FlagEmbedding's distillation mode).

        p_t = softmax(t_i / tau_t),  log p_s = log_softmax(s(q_i, d) / tau)   over d in {d_i+, d_i1- .. d_ik-}
        L = mean_i KL(p_t || p_s) = mean_i sum_d p_t (log p_t - log p_s)

    Args:
        temperature: the student's tau (learnable if the temperature is).
        teacher_temperature: sharpens (< 1) or flattens (> 1) the teacher's distribution.

    Inputs: >= 1 hard negative per query and teacher scores (positive, then negatives) per row.
    """

    temperature: float = 0.05
    teacher_temperature: float = 1.0

    def __post_init__(self) -> None:
        check_temperature(self.temperature)
        check_temperature(self.teacher_temperature)

    def __call__(self, queries: Tensor, documents: Tensor, info: BatchInfo, params: Mapping[str, Tensor] = {}) -> Tensor:
        student = _candidate_scores(queries, documents, info, "kl_distill") * inverse_temperature(self.temperature, params)
        teacher = require(info.teacher_scores, "kl_distill", "teacher scores (positive_score and negative_scores columns)")
        teacher_log_probs = F.log_softmax(teacher.to(student.dtype) / self.teacher_temperature, dim=-1)
        return F.kl_div(F.log_softmax(student, dim=-1), teacher_log_probs, log_target=True, reduction="batchmean")
