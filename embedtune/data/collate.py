"""Turn a list of `Pair`s into tokenised query and document batches plus the loss's `BatchInfo`."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from embedtune.data.types import Pair
from embedtune.losses.batch import BatchInfo, text_ids
from embedtune.model import tokenize


@dataclass
class PairCollator:
    """Tokenise queries and documents separately, each padded to its own longest text, so short
    queries do not pay for long documents' padding.

    Training batches are padded on the right, whatever side the tokenizer pads on at inference
    (decoders: left). With left padding and a causal mask, every pad position's attention row
    is fully masked: a softmax over nothing, whose output and gradient each attention kernel
    defines its own way (CPU kernels give zeros; CUDA kernels need not, and a NaN there reaches
    the weight gradients through the pad positions while the loss stays finite). With right
    padding a pad position still sees the real tokens before it, so no row is empty, every
    pooling finds the same real tokens, and `Embedder.forward` can cut each (GradCache
    mini-)batch to its own longest text. A rotary-position decoder (Qwen3, Llama) embeds a text
    as it does left-padded at inference, rotary positions being relative (``tests/test_decoder.py``).

    Document layout: the batch's positives in query order, then each query's first
    ``negatives_per_query`` hard negatives, query by query (the layout every loss expects).
    Every pair must carry at least that many negatives (checked before training starts).
    """

    tokenizer: object
    query_max_length: int
    document_max_length: int
    negatives_per_query: int = 0
    query_prompt: str = ""
    document_prompt: str = ""

    def __call__(self, pairs: list[Pair]) -> dict:
        k = self.negatives_per_query
        queries = [pair.query for pair in pairs]
        documents = [pair.positive for pair in pairs] + [negative for pair in pairs for negative in pair.negatives[:k]]
        info = BatchInfo(query_ids=text_ids(queries), document_ids=text_ids(documents), negatives_per_query=k)
        if all(pair.label is not None for pair in pairs):
            info.labels = text_ids([pair.label for pair in pairs])
        if all(pair.score is not None for pair in pairs):
            info.scores = torch.tensor([pair.score for pair in pairs])
        if all(len(pair.teacher_scores) >= 1 + k for pair in pairs):
            info.teacher_scores = torch.tensor([pair.teacher_scores[: 1 + k] for pair in pairs])
        return {
            "queries": tokenize(self.tokenizer, queries, self.query_max_length, self.query_prompt, padding_side="right"),
            "documents": tokenize(self.tokenizer, documents, self.document_max_length, self.document_prompt, padding_side="right"),
            "info": info,
        }
