"""Score a model on the held-out set a training run measures before and after: retrieval or STS,
whichever the data is (`embedtune.data.held_out.load_held_out` reads it).

Retrieval (a BEIR folder or a pairs file) asks whether each query finds its documents (nDCG@10
and friends); STS (scored sentence pairs, e.g. STS-B dev) asks whether the cosine orders pairs
like the annotators' gold scores (Spearman). The sentence-level presets (``data=simcse``,
``data=nli``, ``data=sts``) are naturally judged on STS, the retrieval ones on retrieval.
"""

from __future__ import annotations

from embedtune.data.types import RetrievalSet, ScoredPairSet
from embedtune.eval.retrieval import evaluate_retrieval
from embedtune.eval.sts import evaluate_sts
from embedtune.model import Embedder


def evaluate_held_out(
    model: Embedder, held_out: RetrievalSet | ScoredPairSet, batch_size: int = 64, show_progress: bool = True
) -> dict[str, float]:
    """Retrieval metrics or STS correlations of ``model`` on ``held_out``."""
    if isinstance(held_out, ScoredPairSet):
        return evaluate_sts(model, held_out.pairs, batch_size, show_progress)
    return evaluate_retrieval(model, held_out, batch_size, show_progress=show_progress)
