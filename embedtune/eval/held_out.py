"""The held-out set a training run scores before and after: retrieval or STS, whichever the
data is.

Retrieval (a BEIR folder or a pairs file) asks whether each query finds its documents (nDCG@10
and friends); STS (scored sentence pairs, e.g. STS-B dev) asks whether the cosine orders pairs
like the annotators' gold scores (Spearman). The sentence-level presets (``data=simcse``,
``data=nli``, ``data=sts``) are naturally judged on STS, the retrieval ones on retrieval.
"""

from __future__ import annotations

from embedtune.data.types import RetrievalSet, ScoredPairSet
from embedtune.eval.benchmarks import load_benchmark
from embedtune.eval.retrieval import evaluate_retrieval
from embedtune.eval.sts import evaluate_sts
from embedtune.model import Embedder


def load_held_out(source: str, split: str = "test") -> RetrievalSet | ScoredPairSet:
    """A BEIR folder (qrels ``split``) or a (query, positive) pairs file as retrieval, a file of
    scored pairs (STS Benchmark layout, or ``sentence1, sentence2, score`` columns) as STS."""
    benchmark = load_benchmark(source, split)
    if benchmark.task == "sts":
        return ScoredPairSet(benchmark.name, benchmark.pairs)
    return benchmark.retrieval


def evaluate_held_out(model: Embedder, held_out: RetrievalSet | ScoredPairSet, batch_size: int = 64, show_progress: bool = True) -> dict[str, float]:
    """Retrieval metrics or STS correlations of ``model`` on ``held_out``."""
    if isinstance(held_out, ScoredPairSet):
        return evaluate_sts(model, held_out.pairs, batch_size, show_progress)
    return evaluate_retrieval(model, held_out, batch_size, show_progress=show_progress)


def task_name(held_out: RetrievalSet | ScoredPairSet) -> str:
    """'STS' or 'retrieval', for table titles."""
    return "STS" if isinstance(held_out, ScoredPairSet) else "retrieval"
