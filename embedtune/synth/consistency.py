"""Round-trip consistency filtering: keep a generated query only if a retriever finds its source.

An LM asked for a query that a document answers often writes one that document does not answer
best: too generic ("what are the results of the study"), about another topic, or a summary.
InPars (Bonifacio et al. 2022, arXiv:2202.05144) keeps the generations the LM itself scored most
likely; Promptagator (Dai et al. 2022, arXiv:2209.11755) keeps a query only when a retriever
returns its source document among the top k of the whole corpus (k = 1 there, with a retriever
trained on the unfiltered pairs); Gecko (Lee et al. 2024, arXiv:2403.20327) re-ranks the
retrieved documents with the LM and may relabel the positive. Here it is Promptagator's test with
an existing embedding model and a chosen k: the source must rank within the top ``k``.

`source_ranks` / `consistency_filter` are plain functions of embeddings, tested exactly against a
hand-computed ranking; `ConsistencyFilter` embeds a corpus once and applies them batch by batch.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from embedtune.model import Embedder


def source_ranks(query_embeddings: np.ndarray, corpus_embeddings: np.ndarray, sources: np.ndarray) -> np.ndarray:
    """The 1-based rank of each query's source document in the corpus, by dot product (cosine
    for normalised embeddings): 1 + the documents scoring above it + those scoring the same and
    placed before it (ties broken by corpus order, as `embedtune.eval.retrieval.rank` does).

    Args:
        query_embeddings: (queries, dim).
        corpus_embeddings: (corpus, dim).
        sources: (queries,) the corpus index of each query's source.
    """
    scores = query_embeddings @ corpus_embeddings.T  # (queries, corpus)
    own = scores[np.arange(len(sources)), sources][:, None]  # (queries, 1)
    before = np.arange(corpus_embeddings.shape[0])[None, :] < np.asarray(sources)[:, None]  # (queries, corpus)
    return 1 + (scores > own).sum(axis=1) + ((scores == own) & before).sum(axis=1)


def consistency_filter(
    query_embeddings: np.ndarray, corpus_embeddings: np.ndarray, sources: np.ndarray, k: int
) -> tuple[np.ndarray, np.ndarray]:
    """Which queries to keep (their source ranks within the top ``k``), as a boolean mask, and
    every query's rank (`source_ranks`)."""
    ranks = source_ranks(query_embeddings, corpus_embeddings, sources)
    return ranks <= k, ranks


@dataclass
class ConsistencyFilter:
    """An embedding model, ``k``, and per template the corpus it searches: the sources of *all*
    documents (not only the sampled ones), embedded once, repeated texts merged into one entry so
    that a duplicate document does not push its twin down the ranking."""

    model: Embedder
    k: int
    batch_size: int = 64
    corpora: dict[str, tuple[dict[str, int], np.ndarray]] = field(default_factory=dict)  # template -> (text -> row, embeddings)

    def add_corpus(self, template: str, sources: list[str], symmetric: bool, progress=None) -> None:
        """Embed one template's corpus with the model's document prompt (no prompt for a
        symmetric template: both sides of a paraphrase pair are the same kind of text)."""
        rows = {text: row for row, text in enumerate(dict.fromkeys(sources))}
        embeddings = self.model.encode(list(rows), None if symmetric else "document", self.batch_size, progress)
        self.corpora[template] = (rows, embeddings.numpy())

    def apply(self, template: str, queries: list[str], sources: list[str], symmetric: bool) -> tuple[np.ndarray, np.ndarray]:
        """`consistency_filter` for generated ``queries`` of ``template`` made from ``sources``:
        the kept mask and each source's rank (1 = retrieved first)."""
        rows, corpus = self.corpora[template]
        embeddings = self.model.encode(queries, None if symmetric else "query", self.batch_size).numpy()
        return consistency_filter(embeddings, corpus, np.array([rows[source] for source in sources]), self.k)
