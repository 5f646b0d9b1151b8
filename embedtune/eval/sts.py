"""Semantic textual similarity (STS): does the cosine of two sentences' embeddings follow the
gold similarity of scored pairs?

Spearman's rank correlation is the headline number (as in SentEval, MTEB and
sentence-transformers): it asks only whether the cosine *orders* the pairs like the annotators
did, so it does not care that cosines live in [-1, 1] and gold scores in [0, 5]. Pearson's
correlation is reported beside it and also rewards a linear fit. Both are computed here with
numpy, Spearman with average ranks for ties (gold scores such as 5.000 repeat often). The files
are read by `embedtune.data.sts_files`.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from embedtune.console import progress_bar
from embedtune.data.types import Pair
from embedtune.model import Embedder


def pearson(x, y) -> float:
    """Pearson's correlation of two equally long sequences; NaN when either is constant (the
    correlation is undefined, e.g. for a collapsed model that gives every pair the same cosine)."""
    x, y = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
    if x.shape != y.shape or x.ndim != 1 or len(x) < 2:
        raise ValueError(f"need two 1-D sequences of the same length >= 2, got shapes {x.shape} and {y.shape}")
    dx, dy = x - x.mean(), y - y.mean()
    scale = np.sqrt((dx @ dx) * (dy @ dy))
    return float(dx @ dy / scale) if scale > 0 else float("nan")


def average_ranks(values) -> np.ndarray:
    """1-based ranks of ``values``; tied values share the mean of the ranks they span
    (``scipy.stats.rankdata(method="average")``): ranks of [10, 20, 20, 30] are [1, 2.5, 2.5, 4]."""
    values = np.asarray(values, dtype=np.float64)
    order = np.argsort(values, kind="stable")
    ordered = values[order]
    starts = np.concatenate(([0], np.flatnonzero(np.diff(ordered)) + 1))  # first index of each run of equal values
    ends = np.append(starts[1:], len(values))
    ranks = np.empty(len(values))
    ranks[order] = np.repeat((starts + ends + 1) / 2, ends - starts)  # mean of 1-based ranks start+1 .. end
    return ranks


def spearman(x, y) -> float:
    """Spearman's rank correlation: Pearson's correlation of the average ranks."""
    return pearson(average_ranks(x), average_ranks(y))


def embed_sts(
    model: Embedder, pairs: list[Pair], batch_size: int = 64, show_progress: bool = True, name: str = "sts"
) -> tuple[torch.Tensor, torch.Tensor]:
    """Embeddings of each pair's two sentences, (pairs, dim) each. Every distinct sentence is
    encoded once, with no prompt: STS is symmetric, neither side is a query."""
    sentences = list(dict.fromkeys(text for pair in pairs for text in (pair.query, pair.positive)))
    row = {text: i for i, text in enumerate(sentences)}
    with progress_bar(f"embedding {name}", len(sentences), enabled=show_progress) as advance:
        embeddings = model.encode(sentences, None, batch_size, advance)
    return embeddings[[row[pair.query] for pair in pairs]], embeddings[[row[pair.positive] for pair in pairs]]


def score_sts(first: torch.Tensor, second: torch.Tensor, gold: list[float]) -> dict[str, float]:
    """Spearman and Pearson correlation of the pairs' cosine similarity with their gold scores."""
    cosine = F.cosine_similarity(first.float(), second.float(), dim=-1).numpy()
    return {"spearman": spearman(cosine, gold), "pearson": pearson(cosine, gold)}


def evaluate_sts(model: Embedder, pairs: list[Pair], batch_size: int = 64, show_progress: bool = True) -> dict[str, float]:
    """Spearman and Pearson correlation of ``model``'s cosine with the gold scores of ``pairs``."""
    first, second = embed_sts(model, pairs, batch_size, show_progress)
    return score_sts(first, second, [pair.score for pair in pairs])
