"""What a loss receives besides embeddings, and helpers shared by the losses."""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass

import torch
from torch import Tensor

from embedtune.errors import ConfigError


@dataclass
class BatchInfo:
    """Per-batch facts from the data, as tensors aligned with the embeddings.

    ``query_ids`` / ``document_ids``: equal texts share an id, so a loss can tell an exact
    duplicate (a false negative no similarity threshold can catch) from a near one.
    """

    query_ids: Tensor  # (batch,)
    document_ids: Tensor  # (batch * (1 + k),)
    negatives_per_query: int = 0
    labels: Tensor | None = None  # (batch,) integer class of each pair
    scores: Tensor | None = None  # (batch,) gold similarity of each (query, positive)
    teacher_scores: Tensor | None = None  # (batch, 1 + k): positive, then the k negatives

    def to(self, device, **kwargs) -> BatchInfo:
        moved = {name: value.to(device, **kwargs) if isinstance(value, Tensor) else value for name, value in vars(self).items()}
        return BatchInfo(**moved)


def text_ids(texts: list[str]) -> Tensor:
    """A stable 63-bit hash per text: equal texts share an id, on every process, so ids stay
    comparable after batches from several processes are gathered."""
    return torch.tensor([int.from_bytes(hashlib.blake2b(text.encode(), digest_size=8).digest(), "big") >> 1 for text in texts])


def inverse_temperature(temperature: float, params: Mapping[str, Tensor]) -> Tensor | float:
    """1/tau: the learnable ``logit_scale`` (log 1/tau) when the model has one, else the fixed value."""
    return params["logit_scale"].exp() if "logit_scale" in params else 1.0 / temperature


def check_temperature(temperature: float) -> None:
    if not temperature > 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")


def split_documents(documents: Tensor, info: BatchInfo, loss_name: str, minimum: int = 1) -> tuple[Tensor, Tensor]:
    """(positives (batch, dim), hard negatives (batch, k, dim)) from the documents layout."""
    size, k = info.query_ids.shape[0], info.negatives_per_query
    if k < minimum:
        raise ConfigError(
            f"loss {loss_name} needs at least {minimum} hard negative(s) per query: set negatives.per_query >= {minimum} and give the data a negatives column"
        )
    return documents[:size], documents[size:].reshape(size, k, -1)


def require(value: Tensor | None, loss_name: str, what: str) -> Tensor:
    if value is None:
        raise ConfigError(f"loss {loss_name} needs {what} in the data")
    return value
