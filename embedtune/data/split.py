"""Hold out part of a retrieval set's queries: training pairs from the rest, a BEIR folder to test on.

Users with one labelled retrieval set (SciFact's train split, their own qrels) need both a training
set and a held-out set that shares nothing with it but the corpus, as in BEIR's own train/test
splits. The split is by query, seeded, so every relevant document of a held-out query stays unseen
as that query's positive.
"""

from __future__ import annotations

import random

from embedtune.data.types import Pair, RetrievalSet
from embedtune.errors import DataError


def split_queries(benchmark: RetrievalSet, eval_fraction: float, seed: int = 0) -> tuple[list[Pair], RetrievalSet]:
    """``(training pairs, held-out set)``: ``eval_fraction`` of the judged queries (at least one,
    never all) keep their judgements in a `RetrievalSet` over the whole corpus; every other query
    becomes one (query, relevant document) pair per relevant document, in query-id order."""
    if not 0 < eval_fraction < 1:
        raise DataError(f"eval fraction must be in (0, 1), got {eval_fraction}")
    query_ids = sorted(benchmark.qrels)
    if len(query_ids) < 2:
        raise DataError(f"{benchmark.name}: {len(query_ids)} judged query; a split needs at least 2")
    held_out_count = min(len(query_ids) - 1, max(1, round(eval_fraction * len(query_ids))))
    held_out = set(random.Random(seed).sample(query_ids, held_out_count))
    pairs = [
        Pair(benchmark.queries[query_id], benchmark.corpus[doc_id])
        for query_id in query_ids
        if query_id not in held_out
        for doc_id in sorted(benchmark.qrels[query_id])
    ]
    evaluation = RetrievalSet(
        name=f"{benchmark.name}-heldout",
        queries={query_id: benchmark.queries[query_id] for query_id in sorted(held_out)},
        corpus=benchmark.corpus,
        qrels={query_id: benchmark.qrels[query_id] for query_id in sorted(held_out)},
    )
    return pairs, evaluation
