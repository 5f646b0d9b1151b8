"""How long the training texts are in tokens, and how much of them ``max_length`` cuts.

A document longer than ``backbone.max_length`` is truncated: the model never sees its tail, and
on corpora of abstracts or code the share can be large (SciFact's abstracts lose a good part of
their text at 128 tokens). Every training run measures a sample of its pairs and prints the
percentiles and the share cut, so the length is chosen, not guessed.
"""

from __future__ import annotations

import itertools
import random
from dataclasses import dataclass

import numpy as np

from embedtune.data.types import Pair

SAMPLE_PAIRS = 2000
PERCENTILES = (50, 90, 99)
MUCH_CUT = 0.10  # a share of texts cut above this earns a warning


@dataclass(frozen=True)
class Lengths:
    """Token lengths of one side (queries or documents) against the length it is cut to."""

    side: str
    option: str  # the config key that sets max_length
    max_length: int
    lengths: tuple[int, ...]

    @property
    def cut_texts(self) -> float:
        """Share of texts longer than ``max_length``."""
        return float(np.mean(np.array(self.lengths) > self.max_length))

    @property
    def cut_tokens(self) -> float:
        """Share of all tokens that lie beyond ``max_length`` (never seen by the model)."""
        lengths = np.array(self.lengths)
        return float(np.maximum(lengths - self.max_length, 0).sum() / max(lengths.sum(), 1))

    def describe(self) -> str:
        percentiles = ", ".join(f"p{p} {int(np.percentile(self.lengths, p))}" for p in PERCENTILES)
        return (
            f"{self.side}: {len(self.lengths)} texts, tokens {percentiles}, max {max(self.lengths)}; "
            f"{self.option}={self.max_length} cuts {self.cut_texts:.1%} of them ({self.cut_tokens:.1%} of their tokens)"
        )


def sample_pairs(pairs, seed: int, size: int = SAMPLE_PAIRS) -> list[Pair]:
    """Up to ``size`` pairs: a seeded sample of a list, or the first ones of an iterable (a stream
    of batches yields lists of pairs)."""
    if isinstance(pairs, list):
        return pairs if len(pairs) <= size else random.Random(seed).sample(pairs, size)
    return list(itertools.islice((pair for batch in pairs for pair in batch), size))


def measure(
    tokenizer, pairs: list[Pair], prompts: tuple[str, str], max_lengths: tuple[int, int], negatives_per_query: int
) -> list[Lengths]:
    """Token lengths (with prompts and special tokens, untruncated) of the queries and of the
    documents (positives and the hard negatives training uses) of ``pairs``."""
    queries = [prompts[0] + pair.query for pair in pairs]
    documents = [prompts[1] + text for pair in pairs for text in (pair.positive, *pair.negatives[:negatives_per_query])]
    return [
        Lengths(side, option, limit, tuple(len(ids) for ids in tokenizer(texts, truncation=False)["input_ids"]))
        for side, option, limit, texts in (
            ("queries", "train.query_max_length", max_lengths[0], queries),
            ("documents", "backbone.max_length", max_lengths[1], documents),
        )
        if texts
    ]
