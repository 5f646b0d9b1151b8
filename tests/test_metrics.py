"""Ranking metrics against values worked out by hand."""

import math

import pytest
import torch

from embedtune.eval.metrics import mrr_at_k, ndcg_at_k, recall_at_k, retrieval_metrics
from embedtune.eval.retrieval import rank


def test_ndcg_single_relevant_at_rank_three():
    # DCG = 1 / log2(4) = 0.5; ideal DCG = 1
    assert ndcg_at_k(["a", "b", "c"], {"c": 1}, 10) == pytest.approx(0.5)


def test_ndcg_graded_relevance_and_two_relevant():
    ranking = ["x", "a", "b"]
    relevant = {"a": 2, "b": 1}
    dcg = 2 / math.log2(3) + 1 / math.log2(4)
    idcg = 2 / math.log2(2) + 1 / math.log2(3)
    assert ndcg_at_k(ranking, relevant, 10) == pytest.approx(dcg / idcg)


def test_ndcg_cut_at_k_ignores_later_hits():
    assert ndcg_at_k(["x", "y", "a"], {"a": 1}, 2) == 0.0


def test_mrr_first_relevant_only():
    assert mrr_at_k(["x", "a", "b"], {"a": 1, "b": 1}, 10) == pytest.approx(0.5)
    assert mrr_at_k(["x"] * 10 + ["a"], {"a": 1}, 10) == 0.0


def test_recall_with_several_relevant():
    assert recall_at_k(["a", "x", "b"], {"a": 1, "b": 1, "c": 1}, 2) == pytest.approx(1 / 3)
    assert recall_at_k(["a", "x", "b"], {"a": 1, "b": 1, "c": 1}, 3) == pytest.approx(2 / 3)


def test_retrieval_metrics_average_over_queries_and_count_missing_rankings_as_zero():
    metrics = retrieval_metrics({"q1": ["a"]}, {"q1": {"a": 1}, "q2": {"b": 1}})
    assert metrics["ndcg@10"] == pytest.approx(0.5)
    assert metrics["recall@1"] == pytest.approx(0.5)


def test_rank_breaks_ties_by_corpus_order():
    query = torch.tensor([[1.0, 0.0]])
    corpus = torch.tensor([[0.0, 1.0], [1.0, 0.0], [1.0, 0.0], [0.5, 0.5]])
    assert rank(query, corpus, top_k=4).tolist() == [[1, 2, 3, 0]]
    assert rank(query, corpus, top_k=2, chunk_size=1).tolist() == [[1, 2]]
