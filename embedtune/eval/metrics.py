"""Ranking metrics over ranked document ids, defined as in trec_eval / BEIR.

``ranking`` is a query's retrieved document ids, best first; ``relevant`` maps the judged
relevant ids to their graded relevance (> 0). Ties must already be broken in ``ranking``.
"""

from __future__ import annotations

import math


def ndcg_at_k(ranking: list[str], relevant: dict[str, int], k: int) -> float:
    """Normalised discounted cumulative gain with linear gains (trec_eval's ndcg_cut):
    DCG@k = sum_{r=1..k} rel(d_r) / log2(r + 1), divided by the DCG of the ideal ordering."""
    dcg = sum(relevant.get(doc, 0) / math.log2(rank + 2) for rank, doc in enumerate(ranking[:k]))
    ideal = sorted(relevant.values(), reverse=True)[:k]
    idcg = sum(gain / math.log2(rank + 2) for rank, gain in enumerate(ideal))
    return dcg / idcg if idcg > 0 else 0.0


def mrr_at_k(ranking: list[str], relevant: dict[str, int], k: int) -> float:
    """Reciprocal rank of the first relevant document within the top k (0 if none)."""
    for rank, doc in enumerate(ranking[:k], start=1):
        if relevant.get(doc, 0) > 0:
            return 1.0 / rank
    return 0.0


def recall_at_k(ranking: list[str], relevant: dict[str, int], k: int) -> float:
    """Share of the relevant documents found in the top k."""
    positives = {doc for doc, gain in relevant.items() if gain > 0}
    return len(positives.intersection(ranking[:k])) / len(positives) if positives else 0.0


def map_at_k(ranking: list[str], relevant: dict[str, int], k: int) -> float:
    """Average precision within the top k (trec_eval's map_cut): the precision at the rank of
    each relevant document found in the top k, summed and divided by the number of relevant
    documents (all of them, found or not). Grades do not matter, only relevance > 0. Averaged
    over queries this is MAP@k."""
    positives = {doc for doc, gain in relevant.items() if gain > 0}
    hits, total = 0, 0.0
    for rank, doc in enumerate(ranking[:k], start=1):
        if doc in positives:
            hits += 1
            total += hits / rank
    return total / len(positives) if positives else 0.0


def retrieval_metrics(rankings: dict[str, list[str]], qrels: dict[str, dict[str, int]]) -> dict[str, float]:
    """Mean nDCG@10, MRR@10, MAP@100 and Recall@1/10/100 over the queries of ``qrels``."""
    metrics = {"ndcg@10": 0.0, "mrr@10": 0.0, "map@100": 0.0, "recall@1": 0.0, "recall@10": 0.0, "recall@100": 0.0}
    for query_id, relevant in qrels.items():
        ranking = rankings.get(query_id, [])
        metrics["ndcg@10"] += ndcg_at_k(ranking, relevant, 10)
        metrics["mrr@10"] += mrr_at_k(ranking, relevant, 10)
        metrics["map@100"] += map_at_k(ranking, relevant, 100)
        for k in (1, 10, 100):
            metrics[f"recall@{k}"] += recall_at_k(ranking, relevant, k)
    return {name: total / len(qrels) for name, total in metrics.items()}
