"""Evaluation data sets as tasks (`embedtune eval`, `embedtune diagnose`): what `load_held_out`
reads, with the task named and the positive pairs a geometry diagnosis looks at."""

from __future__ import annotations

import random
from dataclasses import dataclass, field

from embedtune.data.held_out import load_held_out
from embedtune.data.rows import Columns
from embedtune.data.types import Pair, RetrievalSet, ScoredPairSet


@dataclass
class Benchmark:
    """One data set: ``task`` is "retrieval" (``retrieval`` is set) or "sts" (``pairs`` are the
    scored pairs). A pairs file also keeps its rows in ``pairs`` (their labels, for plots)."""

    source: str
    name: str
    task: str
    retrieval: RetrievalSet | None = None
    pairs: list[Pair] = field(default_factory=list)

    def describe(self) -> str:
        """Its size in words, for table titles."""
        if self.task == "sts":
            return f"{len(self.pairs)} scored pairs"
        return f"{len(self.retrieval.queries)} queries, {len(self.retrieval.corpus)} documents"


def load_benchmark(source: str, split: str = "test", columns: Columns = Columns(negatives=None)) -> Benchmark:
    """A BEIR folder (qrels ``split``) or a pairs file as retrieval, a scored-pairs file as STS."""
    held_out = load_held_out(source, split, columns)
    if isinstance(held_out, ScoredPairSet):
        return Benchmark(source, held_out.name, "sts", pairs=held_out.pairs)
    return Benchmark(source, held_out.name, "retrieval", held_out, held_out.source_pairs)


def positive_pairs(benchmark: Benchmark, max_pairs: int | None = None, seed: int = 0) -> list[Pair]:
    """The pairs that should embed close together: a pairs file's (query, positive) rows, a BEIR
    folder's judged (query, relevant document) pairs, an STS file's pairs whose gold score is in
    its top quarter (STS scales differ; the top quarter of any scale means "very similar").
    More than ``max_pairs`` are sampled down, seeded, in their original order."""
    if benchmark.task == "sts":
        scores = sorted(pair.score for pair in benchmark.pairs)
        threshold = scores[(3 * len(scores)) // 4]
        pairs = [pair for pair in benchmark.pairs if pair.score >= threshold]
    elif benchmark.pairs:
        pairs = benchmark.pairs
    else:
        retrieval = benchmark.retrieval
        pairs = [Pair(retrieval.queries[qid], retrieval.corpus[did]) for qid, judged in retrieval.qrels.items() for did in judged]
    if max_pairs is not None and len(pairs) > max_pairs:
        keep = sorted(random.Random(seed).sample(range(len(pairs)), max_pairs))
        pairs = [pairs[i] for i in keep]
    return pairs
