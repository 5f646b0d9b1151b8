"""The plain records that flow from data loading into training and evaluation."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class Pair:
    """One training example: a query, its positive document and optional hard negatives."""

    query: str
    positive: str
    negatives: tuple[str, ...] = ()
    score: float | None = None  # gold similarity of (query, positive), for regression losses
    label: str | None = None  # class of the pair, for supervised contrastive loss
    teacher_scores: tuple[float, ...] = ()  # teacher's scores for the positive, then each negative


@dataclass
class RetrievalSet:
    """A retrieval benchmark: query and document texts by id, and graded relevance judgements."""

    name: str
    queries: dict[str, str]
    corpus: dict[str, str]
    qrels: dict[str, dict[str, int]]  # query id -> {document id: relevance > 0}
    source_pairs: list[Pair] = field(default_factory=list)  # a pairs file's rows it was built from (their labels colour plots)


@dataclass
class ScoredPairSet:
    """An STS-style held-out set: sentence pairs whose ``score`` is a gold similarity. A model is
    scored by how well its cosine follows the gold scores (Spearman, `embedtune.eval.sts`)."""

    name: str
    pairs: list[Pair]


@dataclass
class TrainEvalData:
    """What a `data` config builds: training pairs, an optional held-out set, the query prompt."""

    train: list[Pair]
    eval: RetrievalSet | ScoredPairSet | None = None
    stream: object | None = None  # a MixedPairStream instead of `train` for data larger than memory
    query_prompt: str = ""  # prepended to queries at training and inference (saved with the model)
    document_prompt: str = ""
    source: str = field(default="")
