"""Pooling: turn a backbone's token states into one vector per text.

Each function takes ``hidden`` (batch, seq, dim) and ``mask`` (batch, seq; 1 = real token) and
returns (batch, dim). Padding never leaks into the result, whichever side it is on.
"""

from __future__ import annotations

import torch
from torch import Tensor


def mean(hidden: Tensor, mask: Tensor) -> Tensor:
    """Average of the real tokens (Sentence-BERT, Reimers & Gurevych 2019)."""
    weights = mask.unsqueeze(-1).to(hidden.dtype)  # (batch, seq, 1)
    return (hidden * weights).sum(1) / weights.sum(1).clamp(min=1e-9)


def cls(hidden: Tensor, mask: Tensor) -> Tensor:
    """The first token's state ([CLS] for BERT-style encoders; assumes right padding)."""
    return hidden[:, 0]


def max(hidden: Tensor, mask: Tensor) -> Tensor:  # noqa: A001 - the pooling's conventional name
    """Element-wise maximum over the real tokens."""
    padded = hidden.masked_fill(~mask.bool().unsqueeze(-1), torch.finfo(hidden.dtype).min)
    return padded.max(dim=1).values


def last_token(hidden: Tensor, mask: Tensor) -> Tensor:
    """The state of the last real token (decoder LLMs: E5-Mistral, Qwen3-Embedding).

    Works for left padding (the last position) and right padding (the last non-pad position
    per row) alike: the index is the largest position whose mask is 1.
    """
    positions = torch.arange(mask.shape[1], device=mask.device)  # (seq,)
    last = (mask.bool() * positions).argmax(dim=1)  # (batch,)
    return hidden[torch.arange(hidden.shape[0], device=hidden.device), last]


POOLINGS = {"mean": mean, "cls": cls, "max": max, "last_token": last_token}

# sentence-transformers' Pooling config key for each mode.
SENTENCE_TRANSFORMERS_KEYS = {
    "mean": "pooling_mode_mean_tokens",
    "cls": "pooling_mode_cls_token",
    "max": "pooling_mode_max_tokens",
    "last_token": "pooling_mode_lasttoken",
}
