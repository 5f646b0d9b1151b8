"""Mine a pairs file end to end: embed every distinct text once, rank (dense, BM25 or both fused),
filter, and build the training rows `embedtune train data=files` reads (with the scores
distillation losses use)."""

from __future__ import annotations

from collections import defaultdict

from torch import Tensor

from embedtune.console import progress_bar
from embedtune.data.held_out import document_text
from embedtune.data.rows import iter_rows, row_field, row_text
from embedtune.data.types import Pair
from embedtune.errors import ConfigError, DataError
from embedtune.mine.negatives import MiningConfig, mine_negatives, search
from embedtune.mine.rankings import METHODS, bm25_rankings, reciprocal_rank_fusion
from embedtune.model import Embedder


def load_corpus(source: str, column: str = "text") -> list[str]:
    """Document texts from a jsonl/csv/parquet file, one per row, in file order. A row with a
    ``title`` (a BEIR ``corpus.jsonl``) gets it joined in front of ``text``, as `load_beir` does."""
    texts = []
    for where, row in iter_rows(source):
        row_field(row, column, where)  # the column must exist, even where a title alone would do
        texts.append(document_text(row, where) if column == "text" else row_text(row, column, where))
    if not texts:
        raise DataError(f"{source}: no rows")
    return texts


def candidate_rankings(
    method: str, queries: list[str], corpus: list[str], query_embeddings: Tensor, corpus_embeddings: Tensor, config: MiningConfig
) -> list[list[int]]:
    """Per query, the corpus ranked by BM25 (``method="bm25"``) or by the reciprocal rank fusion
    of BM25's and the cosine search's top ``range_max`` (``"hybrid"``), cut at ``range_max``."""
    bm25 = bm25_rankings(queries, corpus, config.range_max)
    if method == "bm25":
        return bm25
    dense = [
        row for indices, _ in search(query_embeddings, corpus_embeddings, config.range_max, config.chunk_size) for row in indices.tolist()
    ]
    return [reciprocal_rank_fusion([by_cosine, by_words])[: config.range_max] for by_cosine, by_words in zip(dense, bm25, strict=True)]


def mine_pairs(
    model: Embedder, pairs: list[Pair], corpus: list[str], config: MiningConfig, batch_size: int, method: str = "dense"
) -> tuple[list[dict], dict[str, int]]:
    """One output row per pair (``query``, ``positive``, ``negatives``, ``positive_score``,
    ``negative_scores``) and the filters' counts. The positives join the embedded documents, so
    the positive-aware filter can compare each candidate with the query's own positive.
    ``method`` ranks the candidates: ``dense`` by cosine, ``bm25`` or ``hybrid`` as in
    `candidate_rankings`; the filters and the written scores are the model's cosines for all."""
    if method not in METHODS:
        raise ConfigError(f"--method must be one of {', '.join(METHODS)}, got '{method}'")
    queries = list(dict.fromkeys(pair.query for pair in pairs))
    documents = list(dict.fromkeys([*corpus, *(pair.positive for pair in pairs)]))
    with progress_bar("embedding", len(queries) + len(documents)) as advance:
        query_embeddings = model.encode(queries, "query", batch_size, advance)
        document_embeddings = model.encode(documents, "document", batch_size, advance)
    query_row = {text: i for i, text in enumerate(queries)}
    document_row = {text: i for i, text in enumerate(documents)}
    positives_of = defaultdict(set)
    for pair in pairs:
        positives_of[pair.query].add(pair.positive)
    corpus_embeddings = document_embeddings[[document_row[text] for text in corpus]]
    rankings = None
    if method != "dense":
        per_query = candidate_rankings(method, queries, corpus, query_embeddings, corpus_embeddings, config)
        rankings = [per_query[query_row[pair.query]] for pair in pairs]
    mined, counts = mine_negatives(
        query_embeddings[[query_row[pair.query] for pair in pairs]],
        document_embeddings[[document_row[pair.positive] for pair in pairs]],
        corpus_embeddings,
        corpus,
        [positives_of[pair.query] for pair in pairs],
        config,
        rankings,
    )
    rows = [
        {
            "query": pair.query,
            "positive": pair.positive,
            "negatives": [corpus[i] for i in result.indices],
            "positive_score": round(result.positive_score, 6),
            "negative_scores": [round(score, 6) for score in result.scores],
        }
        for pair, result in zip(pairs, mined)
    ]
    return rows, counts
