"""Hard-negative mining: for each query, documents the model ranks high that are not its positive.

Hard negatives teach a retriever the fine distinctions that in-batch negatives never show it
(DPR, Karpukhin et al. 2020; E5, Wang et al. 2022). But the documents a model ranks highest are
often *false negatives*: relevant documents that simply were not labelled. Training pushes them
away from the query, so the model unlearns exactly what it should learn, and the harder the
mining the more of them slip in. NV-Retriever (Moreira et al. 2024, "Improving text embedding
models with effective hard-negative mining", arXiv:2407.15831) compares the usual remedies and
finds *positive-aware* filters best: drop every candidate that scores above the query's own
positive minus a margin (TopK-MarginPos) or above a share of it (TopK-PercPos, 95%), rather than
only skipping the top ranks (a fixed rank window) or capping the raw score.

`mine_negatives` applies, to the candidates in a rank window of a ranking (by default the exact
cosine search; or one from `embedtune.mine.rankings`, e.g. BM25), these filters in order, on the
model's cosines whatever ranked the candidates, counting what each removes:

1. exact positives: any document whose text is a positive of the query (its own, or that of
   another row with the same query text);
2. ``max_score``: an absolute cap on the score;
3. positive-aware: ``score > positive_score - margin`` or, with ``relative_margin`` r,
   ``score > positive_score * (1 - r)`` (both apply when both are set);
4. duplicates: a text already kept for this query (corpora often repeat documents).

The survivors are taken best first or sampled at random, ``num_negatives`` per query.
"""

from __future__ import annotations

import random
from collections.abc import Collection, Iterable, Iterator, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from embedtune.errors import ConfigError
from embedtune.eval.retrieval import rank

SAMPLINGS = ("top", "random")
# What `mine_negatives` counts, in filter order: every candidate of the window, what each filter
# removed, and the eligible rest (from which num_negatives per query are taken).
COUNTS = ("candidates", "exact_positive", "above_max_score", "above_positive_margin", "duplicate", "eligible")


@dataclass(frozen=True)
class MiningConfig:
    """How to pick negatives from each query's ranked candidates (the `embedtune mine` flags).

    Args:
        num_negatives: negatives per query (fewer when too few candidates survive the filters).
        range_min / range_max: candidates come from ranks [range_min, range_max) of the search,
            best = rank 0. A range_min of 10 or so skips the top, where false negatives gather.
        sampling: "top" takes the best eligible candidates; "random" samples them uniformly from
            the window (seeded), which gives easier, more varied negatives.
        max_score: drop candidates scoring above this cosine (None: no cap).
        margin: drop candidates scoring above ``positive_score - margin``; 0 drops those that
            beat the positive, -inf turns the filter off.
        relative_margin: r in [0, 1): also drop candidates above ``positive_score * (1 - r)``
            (NV-Retriever's TopK-PercPos uses r = 0.05).
        seed: for "random" sampling.
        chunk_size: queries scored against the whole corpus at a time (memory bound).
    """

    num_negatives: int = 7
    range_min: int = 0
    range_max: int = 100
    sampling: str = "top"
    max_score: float | None = None
    margin: float = 0.0
    relative_margin: float | None = None
    seed: int = 0
    chunk_size: int = 256

    def __post_init__(self) -> None:
        if self.num_negatives < 1:
            raise ConfigError(f"--num-negatives must be >= 1, got {self.num_negatives}")
        if not 0 <= self.range_min < self.range_max:
            raise ConfigError(f"need 0 <= --range-min < --range-max, got {self.range_min} and {self.range_max}")
        if self.sampling not in SAMPLINGS:
            raise ConfigError(f"--sampling must be one of {', '.join(SAMPLINGS)}, got '{self.sampling}'")
        if self.margin != self.margin:
            raise ConfigError("--margin must be a number, got nan")
        if self.relative_margin is not None and not 0 <= self.relative_margin < 1:
            raise ConfigError(f"--relative-margin must be in [0, 1), got {self.relative_margin}")
        if self.chunk_size < 1:
            raise ConfigError(f"chunk size must be >= 1, got {self.chunk_size}")

    def ceiling(self, positive_score: float) -> float:
        """The highest score a negative may have, given its query's positive score."""
        ceiling = positive_score - self.margin
        if self.relative_margin is not None:
            ceiling = min(ceiling, positive_score * (1 - self.relative_margin))
        return ceiling


@dataclass
class Mined:
    """One query's negatives: corpus indices best first, their scores, and the positive's score
    (kept so distillation losses can use the teacher's scores)."""

    indices: list[int]
    scores: list[float]
    positive_score: float


def search(
    query_embeddings: Tensor, corpus_embeddings: Tensor, top_k: int, chunk_size: int = 256, use_faiss: bool | None = None
) -> Iterator[tuple[Tensor, Tensor]]:
    """Exact top-k by dot product (cosine for normalised embeddings), one query chunk at a time:
    yields ``(indices, scores)``, each (chunk, top_k), best first, ties by corpus order.

    Uses faiss's ``IndexFlatIP`` when faiss is importable (``use_faiss=None``): the same exact
    search, but multi-threaded and keeping a k-heap per query instead of sorting chunk x corpus
    scores; otherwise `embedtune.eval.retrieval.rank`. Both give the same lists up to float
    rounding of near-ties.
    """
    faiss = None
    if use_faiss is not False:
        try:
            import faiss
        except ImportError:
            if use_faiss:
                raise
    top_k = min(top_k, corpus_embeddings.shape[0])
    if faiss is None:
        for chunk in query_embeddings.split(chunk_size):
            yield rank(chunk, corpus_embeddings, top_k, chunk_size, return_scores=True)
        return
    index = faiss.IndexFlatIP(corpus_embeddings.shape[1])
    index.add(corpus_embeddings.detach().float().cpu().contiguous().numpy())
    for chunk in query_embeddings.split(chunk_size):
        scores, indices = index.search(chunk.detach().float().cpu().contiguous().numpy(), top_k)
        order = np.lexsort((indices, -scores))  # faiss puts tied documents last-index first: match rank
        yield torch.from_numpy(np.take_along_axis(indices, order, 1)), torch.from_numpy(np.take_along_axis(scores, order, 1))


def dense_candidates(query_embeddings: Tensor, corpus_embeddings: Tensor, config: MiningConfig) -> Iterator[tuple[list[int], list[float]]]:
    """Per query, the rank window of the exact cosine search: ``(corpus indices, cosines)``, best first."""
    window = slice(config.range_min, None)  # search stops at range_max
    for indices, scores in search(query_embeddings, corpus_embeddings, config.range_max, config.chunk_size):
        yield from zip(indices[:, window].tolist(), scores[:, window].tolist())


def ranked_candidates(
    query_embeddings: Tensor, corpus_embeddings: Tensor, rankings: Iterable[Sequence[int]], config: MiningConfig
) -> Iterator[tuple[list[int], list[float]]]:
    """Per query, the rank window of a given ranking (corpus indices, best first) and the
    candidates' cosines with the query, which the filters compare with the positive's."""
    for query, ranking in zip(query_embeddings, rankings, strict=True):
        candidates = list(ranking[config.range_min : config.range_max])
        yield candidates, (corpus_embeddings[candidates] @ query).tolist()


def mine_negatives(
    query_embeddings: Tensor,
    positive_embeddings: Tensor,
    corpus_embeddings: Tensor,
    corpus_texts: Sequence[str],
    positives: Sequence[Collection[str]],
    config: MiningConfig = MiningConfig(),
    rankings: Sequence[Sequence[int]] | None = None,
) -> tuple[list[Mined], dict[str, int]]:
    """Mine up to ``config.num_negatives`` hard negatives per query.

    Args:
        query_embeddings: (queries, dim), one row per training pair.
        positive_embeddings: (queries, dim), each row's own positive; its dot product with the
            query is the ``positive_score`` that the positive-aware filter measures against.
        corpus_embeddings: (corpus, dim) candidates, in the order of ``corpus_texts``.
        corpus_texts: the candidates' texts, by which exact positives and duplicates are found.
        positives: per query, every positive text of that query (never a negative for it).
        rankings: per query, corpus indices best first (BM25's, a fusion's), of which the window
            ``[range_min, range_max)`` is taken; None: the exact cosine search ranks. The filters
            and the scores written are the model's cosines either way.

    Returns:
        one `Mined` per query, and the candidate counts named in `COUNTS`: all window
        candidates go through the filters (not only until enough are found), so the counts do
        not depend on ``num_negatives`` or the sampling.
    """
    rng = random.Random(config.seed)
    positive_scores = (query_embeddings * positive_embeddings).sum(dim=1).tolist()
    counts = dict.fromkeys(COUNTS, 0)
    mined = []
    if rankings is None:
        ranked = dense_candidates(query_embeddings, corpus_embeddings, config)
    else:
        ranked = ranked_candidates(query_embeddings, corpus_embeddings, rankings, config)
    for (candidates, scores), positive_score, own_positives in zip(ranked, positive_scores, positives):
        ceiling = config.ceiling(positive_score)
        kept, seen = [], set()
        for index, score in zip(candidates, scores):
            text = corpus_texts[index]
            if text in own_positives:
                counts["exact_positive"] += 1
            elif config.max_score is not None and score > config.max_score:
                counts["above_max_score"] += 1
            elif score > ceiling:
                counts["above_positive_margin"] += 1
            elif text in seen:
                counts["duplicate"] += 1
            else:
                seen.add(text)
                kept.append((index, score))
        counts["candidates"] += len(candidates)
        counts["eligible"] += len(kept)
        take = min(config.num_negatives, len(kept))
        chosen = kept[:take] if config.sampling == "top" else [kept[i] for i in sorted(rng.sample(range(len(kept)), take))]
        mined.append(Mined([index for index, _ in chosen], [score for _, score in chosen], positive_score))
    return mined, counts
