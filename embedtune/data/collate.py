"""Turn a list of `Pair`s into tokenised query and document batches."""

from __future__ import annotations

from dataclasses import dataclass

from embedtune.data.types import Pair
from embedtune.model import tokenize


@dataclass
class PairCollator:
    """Tokenise queries and documents separately, each padded to its own longest text, so short
    queries do not pay for long documents' padding.

    Document layout: the batch's positives in query order, then each query's first
    ``negatives_per_query`` hard negatives, query by query (the layout every loss expects).
    """

    tokenizer: object
    query_max_length: int
    document_max_length: int
    negatives_per_query: int = 0
    query_prompt: str = ""
    document_prompt: str = ""

    def __call__(self, pairs: list[Pair]) -> dict:
        queries = [pair.query for pair in pairs]
        documents = [pair.positive for pair in pairs]
        documents += [negative for pair in pairs for negative in pair.negatives[: self.negatives_per_query]]
        return {
            "queries": tokenize(self.tokenizer, queries, self.query_max_length, self.query_prompt),
            "documents": tokenize(self.tokenizer, documents, self.document_max_length, self.document_prompt),
        }
