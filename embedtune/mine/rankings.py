"""Candidate rankings other than the dense search: BM25, and its fusion with the dense ranking.

Dense mining finds the documents the model already confuses with the positive. BM25 finds those
that share the query's words, which is what Qwen3-Embedding's SFT data takes as hard negatives:
lexically close, semantically wrong, and not limited to what the model has learnt to see. Either
way only the *ranking* comes from here; `embedtune.mine.negatives.mine_negatives` takes it and
applies the same rank window and false-negative filters, on the model's cosines, as for dense
mining.

A ranking is one list of corpus indices per query, best first.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from embedtune.errors import ConfigError

METHODS = ("dense", "bm25", "hybrid")
RRF_K = 60


def require_bm25s():
    """The `bm25s` module, or a one-line `ConfigError` saying how to install it (an optional extra,
    so that dense mining needs nothing more)."""
    try:
        import bm25s
    except ImportError as error:
        raise ConfigError(f"--method bm25 and hybrid need the bm25s package ({error}): pip install 'embedtune[bm25]'") from None
    return bm25s


def best_indices(scores: np.ndarray, top_k: int) -> list[int]:
    """Indices of the ``top_k`` highest positive scores, best first, ties by index (as the dense
    search breaks them). Zero scores are left out: for BM25 they mean no word in common, an
    arbitrary order rather than a ranking."""
    positive = np.flatnonzero(scores > 0)
    if len(positive) > top_k:  # the k-th best score, then everything at or above it: exact with ties
        threshold = np.partition(scores[positive], len(positive) - top_k)[len(positive) - top_k]
        positive = positive[scores[positive] >= threshold]
    order = np.lexsort((positive, -scores[positive]))
    return positive[order][:top_k].tolist()


def bm25_rankings(queries: Sequence[str], corpus: Sequence[str], top_k: int) -> list[list[int]]:
    """Per query, the ``top_k`` corpus indices of highest BM25 score with it, best first; documents
    sharing no word with the query are not ranked (so a list may be shorter than ``top_k``).

    BM25 is the probabilistic relevance framework's ranking function (Robertson & Zaragoza 2009,
    "The Probabilistic Relevance Framework: BM25 and Beyond"), computed by `bm25s` (Lù 2024,
    arXiv:2407.03618) in its default Lucene variant: for query terms t,
    ``sum_t log(1 + (N - df_t + 0.5) / (df_t + 0.5)) * tf / (tf + k1 * (1 - b + b * len_d / avg_len))``
    with k1 = 1.5, b = 0.75. Texts are lowercased and split into words of two or more letters or
    digits, English stop words removed, without stemming.
    """
    bm25s = require_bm25s()

    def tokenize(texts: Sequence[str]) -> list[list[str]]:
        return bm25s.tokenize(list(texts), stopwords="en", return_ids=False, show_progress=False)

    index = bm25s.BM25()
    index.index(tokenize(corpus), show_progress=False)
    rankings = []
    for tokens in tokenize(queries):
        known = index.get_tokens_ids(tokens)
        rankings.append(best_indices(index.get_scores(known), top_k) if known else [])
    return rankings


def reciprocal_rank_fusion(rankings: Sequence[Sequence[int]], k: int = RRF_K) -> list[int]:
    """One query's rankings fused into one, best first: reciprocal rank fusion (Cormack, Clarke &
    Büttcher 2009, "Reciprocal Rank Fusion outperforms Condorcet and individual Rank Learning
    Methods"), ``score(d) = sum over rankings r of 1 / (k + rank_r(d))`` with ranks from 1 and
    k = 60, the paper's value; a ranking that does not list d adds nothing. It needs no score
    calibration between cosines and BM25 scores, which live on unrelated scales. Ties by index."""
    fused: dict[int, float] = {}
    for ranking in rankings:
        for rank, index in enumerate(ranking, start=1):
            fused[index] = fused.get(index, 0.0) + 1 / (k + rank)
    return sorted(fused, key=lambda index: (-fused[index], index))
