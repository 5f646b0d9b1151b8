"""Scored sentence pairs for regression-style losses (``data=sts``): STS-B and its kin.

Each row is (sentence1, sentence2, gold similarity). The pairs train a loss that reads the gold
score: CoSENT (Su 2022; the preset's default), which only asks that higher-scored pairs get
higher cosines, or cosine regression (Reimers & Gurevych 2019, Sentence-BERT's STS recipe),
which fits the cosine to the score rescaled from [score_min, score_max] to [0, 1]
(``loss=cosine``; its range follows ``data.score_min`` / ``data.score_max``). There are no
hard negatives; the in-batch pairs are compared with each other by their scores.

Files are read by `embedtune.data.sts_files.iter_sts`: the STS Benchmark distribution (tab-separated,
no header, fields genre, source, year, id, score, sentence1, sentence2; extra fields ignored) or
any file with ``sentence1``, ``sentence2`` and ``score`` columns. Every score must lie within
[score_min, score_max]: a score outside says the range (or the file) is not what you think.
"""

from __future__ import annotations

import dataclasses

from embedtune.console import announce
from embedtune.data.held_out import load_held_out
from embedtune.data.sts_files import iter_sts
from embedtune.data.types import Pair, TrainEvalData
from embedtune.errors import ConfigError, DataError


def load_scored(source: str, score_min: float = 0.0, score_max: float = 5.0) -> list[Pair]:
    """Scored pairs of ``source`` without labels; a bad row or a score outside the range raises
    `DataError` naming ``file:line``."""
    if not score_max > score_min:
        raise ConfigError(f"data.score_max must be > data.score_min, got {score_min}..{score_max}")
    pairs = []
    for where, pair in iter_sts(source):
        if not score_min <= pair.score <= score_max:
            raise DataError(f"{where}: score {pair.score:g} is outside data.score_min..data.score_max = {score_min:g}..{score_max:g}")
        pairs.append(dataclasses.replace(pair, label=None))  # the STS-B genre is not a class to contrast
    return pairs


def load(train: str, eval: str | None = None, eval_split: str = "test", score_min: float = 0.0, score_max: float = 5.0) -> TrainEvalData:
    """The ``data=sts`` config: scored training pairs, a held-out set (STS or retrieval)."""
    pairs = load_scored(train, score_min, score_max)
    if len(pairs) < 2:
        raise DataError(f"{train}: scored-pair losses compare pairs with each other; need at least 2, got {len(pairs)}")
    distinct = len({pair.score for pair in pairs})
    announce(
        f"data=sts: {len(pairs):,} scored pairs from {train} (scores {min(p.score for p in pairs):g}..{max(p.score for p in pairs):g}, {distinct:,} distinct values; range {score_min:g}..{score_max:g}), all used"
    )
    return TrainEvalData(train=pairs, eval=load_held_out(eval, eval_split) if eval else None, source=train)
