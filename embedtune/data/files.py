"""The ``data=files`` preset: training pairs from the user's file, a held-out set beside it."""

from __future__ import annotations

from embedtune.data.held_out import load_held_out
from embedtune.data.rows import Columns, load_pairs
from embedtune.data.types import TrainEvalData


def load(
    train: str,
    eval: str | None = None,
    eval_split: str = "test",
    query_column: str = "query",
    positive_column: str = "positive",
    negatives_column: str | None = "negatives",
    score_column: str | None = None,
    label_column: str | None = None,
    teacher_positive_column: str | None = "positive_score",
    teacher_negatives_column: str | None = "negative_scores",
    query_prompt: str = "",
    document_prompt: str = "",
) -> TrainEvalData:
    """The ``data=files`` config: training pairs from ``train``, held-out set from ``eval``."""
    columns = Columns(
        query_column, positive_column, negatives_column, score_column, label_column, teacher_positive_column, teacher_negatives_column
    )
    return TrainEvalData(
        train=load_pairs(train, columns),
        eval=load_held_out(eval, eval_split, columns) if eval else None,
        query_prompt=query_prompt,
        document_prompt=document_prompt,
        source=train,
    )
