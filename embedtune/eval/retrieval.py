"""Score an Embedder on a `RetrievalSet`: embed queries and corpus, rank by cosine, compute metrics."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from embedtune.console import progress_bar
from embedtune.data.types import RetrievalSet
from embedtune.eval.metrics import retrieval_metrics
from embedtune.model import Embedder


def rank(
    query_embeddings: torch.Tensor, corpus_embeddings: torch.Tensor, top_k: int, chunk_size: int = 256, return_scores: bool = False
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """Indices of the ``top_k`` best documents per query, best first, by dot product; with
    ``return_scores`` the pair ``(indices, scores)``, both (queries, top_k).

    Queries go through in chunks so memory stays at chunk_size x corpus scores. Ties are broken
    by corpus order (a stable sort: the lower index ranks first), so results are reproducible.
    """
    top_k = min(top_k, corpus_embeddings.shape[0])
    ranked, values = [], []
    for start in range(0, query_embeddings.shape[0], chunk_size):
        scores = query_embeddings[start : start + chunk_size] @ corpus_embeddings.T  # (chunk, corpus)
        top = torch.sort(scores, dim=1, descending=True, stable=True)
        ranked.append(top.indices[:, :top_k])
        values.append(top.values[:, :top_k])
    indices = torch.cat(ranked) if ranked else torch.empty(0, top_k, dtype=torch.long)
    if not return_scores:
        return indices
    return indices, torch.cat(values) if values else torch.empty(0, top_k)


def truncate(embeddings: torch.Tensor, dim: int) -> torch.Tensor:
    """The first ``dim`` dimensions of each embedding, re-normalised: how a Matryoshka model is
    used at a smaller size. ``dim`` at or above the full size returns the embeddings unchanged."""
    if dim >= embeddings.shape[1]:
        return embeddings
    return F.normalize(embeddings[:, :dim], dim=-1)


def embed_retrieval_set(
    model: Embedder, benchmark: RetrievalSet, batch_size: int = 64, show_progress: bool = True
) -> tuple[torch.Tensor, torch.Tensor]:
    """Query and corpus embeddings of ``benchmark`` (in the order of its dicts), encoded once so
    that several Matryoshka sizes can be scored from them."""
    total = len(benchmark.queries) + len(benchmark.corpus)
    with progress_bar(f"embedding {benchmark.name}", total, enabled=show_progress) as advance:
        queries = model.encode(list(benchmark.queries.values()), "query", batch_size, advance)
        corpus = model.encode(list(benchmark.corpus.values()), "document", batch_size, advance)
    return queries, corpus


def score_retrieval(queries: torch.Tensor, corpus: torch.Tensor, benchmark: RetrievalSet, top_k: int = 100) -> dict[str, float]:
    """Retrieval metrics of precomputed embeddings (rows in the order of ``benchmark``'s dicts)."""
    query_ids, doc_ids = list(benchmark.queries), list(benchmark.corpus)
    top = rank(queries, corpus, top_k)
    rankings = {qid: [doc_ids[j] for j in row] for qid, row in zip(query_ids, top.tolist())}
    return retrieval_metrics(rankings, benchmark.qrels)


def evaluate_retrieval(
    model: Embedder, benchmark: RetrievalSet, batch_size: int = 64, top_k: int = 100, show_progress: bool = True
) -> dict[str, float]:
    """nDCG@10, MRR@10, MAP@100 and Recall@1/10/100 of ``model`` on ``benchmark``."""
    queries, corpus = embed_retrieval_set(model, benchmark, batch_size, show_progress)
    return score_retrieval(queries, corpus, benchmark, top_k)
