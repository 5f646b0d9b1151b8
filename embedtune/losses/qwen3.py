"""The Qwen3-Embedding contrastive loss: an InfoNCE whose denominator adds query-query and
document-document terms, with a false-negative mask."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import torch
from torch import Tensor

from embedtune.losses.batch import BatchInfo, check_temperature, inverse_temperature


@dataclass
class Qwen3Loss:
    """Improved InfoNCE of Qwen3-Embedding (Zhang et al. 2025, "Qwen3 Embedding: Advancing Text
    Embedding and Reranking Through Foundation Models", eq. 1; after GTE, Li et al. 2023).

        L = -1/N sum_i log( exp(s(q_i, d_i+)/tau) / Z_i )

        Z_i = exp(s(q_i, d_i+)/tau)
            + sum_k   m_ik exp(s(q_i, d_ik-)/tau)        hard negatives of query i
            + sum_j!=i m_ij exp(s(q_i, d_j)/tau)         other in-batch documents
            + sum_j!=i m_ij exp(s(q_i, q_j)/tau)         other queries
            + sum_j!=i m_ij exp(s(d_i+, d_j)/tau)        documents vs the positive

    "Other in-batch documents" are every document of the batch except d_i+ and query i's own
    hard negatives (those are the second term): the other queries' positives and their hard
    negatives. "Documents vs the positive" compares d_i+ with every other document of the batch.

    False-negative mask (``mask_false_negatives``): m = 0, dropping the term, when
      (a) its similarity exceeds the positive's score by the margin: s > s(q_i, d_i+) + margin.
          Every term, including the q-q and d-d ones, is gated by the same reference score
          s(q_i, d_i+): a candidate the model already finds clearly closer to the anchor than
          the labelled positive is more likely an unlabelled positive than a negative, and
          pushing it away teaches the wrong thing; or
      (b) it is the same text as the positive (d_j == d_i+, an exact duplicate), or for the q-q
          term the same text as the query (q_j == q_i). Exact duplicates score s(q_i, d_i+)
          exactly, so no threshold with a positive margin can catch them: they are found by text.

    Args:
        temperature: tau > 0 (the paper uses 0.05 with cosine similarity).
        margin: the 0.1 of the paper's mask.
        hard_negatives, in_batch_documents, query_query, document_document: include each term.
        mask_false_negatives: apply the mask m (otherwise every m = 1).

    Inputs: ``queries`` (batch, dim), ``documents`` (batch * (1 + k), dim), positives first, then
    the k hard negatives of each query in query order; ``info`` gives the text ids.
    """

    temperature: float = 0.05
    margin: float = 0.1
    hard_negatives: bool = True
    in_batch_documents: bool = True
    query_query: bool = True
    document_document: bool = True
    mask_false_negatives: bool = True

    def __post_init__(self) -> None:
        check_temperature(self.temperature)

    def __call__(self, queries: Tensor, documents: Tensor, info: BatchInfo, params: Mapping[str, Tensor] = {}) -> Tensor:
        size, k, device = queries.shape[0], info.negatives_per_query, queries.device
        scale = inverse_temperature(self.temperature, params)
        positives = documents[:size]
        rows = torch.arange(size, device=device)
        owner = torch.cat([rows, rows.repeat_interleave(k)])  # (n_docs,) which query a document belongs to
        is_positive = torch.zeros(documents.shape[0], dtype=torch.bool, device=device)
        is_positive[:size] = True

        query_doc = queries @ documents.T  # (batch, n_docs)
        positive_score = query_doc[rows, rows].unsqueeze(1)  # (batch, 1)
        own = owner.unsqueeze(0) == rows.unsqueeze(1)  # (batch, n_docs): query i's positive and negatives
        the_positive = own & is_positive.unsqueeze(0)
        same_text_as_positive = info.document_ids.unsqueeze(0) == info.document_ids[:size].unsqueeze(1)

        def keep(scores: Tensor, duplicate: Tensor) -> Tensor:
            if not self.mask_false_negatives:
                return torch.ones_like(scores, dtype=torch.bool)
            return (scores <= positive_score + self.margin) & ~duplicate

        terms = [positive_score]
        term_masks = [torch.ones_like(positive_score, dtype=torch.bool)]
        if self.hard_negatives and k:
            terms.append(query_doc)
            term_masks.append(own & ~is_positive.unsqueeze(0) & keep(query_doc, same_text_as_positive))
        if self.in_batch_documents:
            terms.append(query_doc)
            term_masks.append(~own & keep(query_doc, same_text_as_positive))
        if self.query_query:
            query_query = queries @ queries.T  # (batch, batch)
            same_query = info.query_ids.unsqueeze(0) == info.query_ids.unsqueeze(1)
            terms.append(query_query)
            term_masks.append(~torch.eye(size, dtype=torch.bool, device=device) & keep(query_query, same_query))
        if self.document_document:
            doc_doc = positives @ documents.T  # (batch, n_docs)
            terms.append(doc_doc)
            term_masks.append(~the_positive & keep(doc_doc, same_text_as_positive))

        logits = torch.cat(terms, dim=1) * scale
        logits = logits.masked_fill(~torch.cat(term_masks, dim=1), float("-inf"))
        return (torch.logsumexp(logits, dim=1) - logits[:, 0]).mean()
