"""Semantic textual similarity (STS): does the cosine of two sentences' embeddings follow the
gold similarity of scored pairs?

Spearman's rank correlation is the headline number (as in SentEval, MTEB and
sentence-transformers): it asks only whether the cosine *orders* the pairs like the annotators
did, so it does not care that cosines live in [-1, 1] and gold scores in [0, 5]. Pearson's
correlation is reported beside it and also rewards a linear fit. Both are computed here with
numpy, Spearman with average ranks for ties (gold scores such as 5.000 repeat often).

Two file layouts are read:

- the STS Benchmark distribution (``sts-dev.csv``): tab-separated, no header and no quoting, the
  fields genre, source, year, id, score, sentence1, sentence2; some rows carry extra fields,
  which are ignored. It must be split on tabs only: its sentences hold unbalanced quotes that
  a quote-aware csv reader would merge across lines;
- any file `embedtune.data.files.iter_rows` reads (jsonl, csv with a header, parquet, ``hf:``)
  with the columns ``sentence1``, ``sentence2`` and ``score``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from embedtune.data.files import Columns, iter_rows, pair_from_row
from embedtune.data.types import Pair
from embedtune.errors import DataError
from embedtune.model import Embedder
from embedtune.progress import progress_bar

STS_COLUMNS = Columns(query="sentence1", positive="sentence2", negatives=None, score="score", teacher_positive=None)
STSB_COLUMNS = dataclasses.replace(STS_COLUMNS, label="genre")
STSB_FIELDS = ("genre", "source", "year", "id", "score", "sentence1", "sentence2")
STSB_SUFFIXES = (".csv", ".tsv")


def pearson(x, y) -> float:
    """Pearson's correlation of two equally long sequences; NaN when either is constant (the
    correlation is undefined, e.g. for a collapsed model that gives every pair the same cosine)."""
    x, y = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
    if x.shape != y.shape or x.ndim != 1 or len(x) < 2:
        raise ValueError(f"need two 1-D sequences of the same length >= 2, got shapes {x.shape} and {y.shape}")
    dx, dy = x - x.mean(), y - y.mean()
    scale = np.sqrt((dx @ dx) * (dy @ dy))
    return float(dx @ dy / scale) if scale > 0 else float("nan")


def average_ranks(values) -> np.ndarray:
    """1-based ranks of ``values``; tied values share the mean of the ranks they span
    (``scipy.stats.rankdata(method="average")``): ranks of [10, 20, 20, 30] are [1, 2.5, 2.5, 4]."""
    values = np.asarray(values, dtype=np.float64)
    order = np.argsort(values, kind="stable")
    ordered = values[order]
    starts = np.concatenate(([0], np.flatnonzero(np.diff(ordered)) + 1))  # first index of each run of equal values
    ends = np.append(starts[1:], len(values))
    ranks = np.empty(len(values))
    ranks[order] = np.repeat((starts + ends + 1) / 2, ends - starts)  # mean of 1-based ranks start+1 .. end
    return ranks


def spearman(x, y) -> float:
    """Spearman's rank correlation: Pearson's correlation of the average ranks."""
    return pearson(average_ranks(x), average_ranks(y))


def _stsb_layout(path: Path) -> bool:
    """Whether the first non-empty line of ``path`` looks like an STS Benchmark row: at least 7
    tab-separated fields with a number in the score field (a header row has a name there)."""
    with path.open(encoding="utf-8", errors="replace") as handle:
        line = next((line for line in handle if line.strip()), "")
    fields = line.rstrip("\r\n").split("\t")
    if len(fields) < len(STSB_FIELDS):
        return False
    try:
        float(fields[STSB_FIELDS.index("score")])
    except ValueError:
        return False
    return True


def is_sts_file(source: str) -> bool:
    """Whether ``source`` holds scored sentence pairs: the STS Benchmark layout, or a first row
    with the columns ``sentence1``, ``sentence2`` and ``score``."""
    path = Path(source)
    if path.is_file() and path.suffix.lower() in STSB_SUFFIXES and _stsb_layout(path):
        return True
    first = next(iter_rows(source), None)
    return first is not None and {STS_COLUMNS.query, STS_COLUMNS.positive, STS_COLUMNS.score} <= set(first[1])


def load_sts(source: str) -> list[Pair]:
    """Scored pairs as `Pair` (``query`` = sentence1, ``positive`` = sentence2, ``score``); the
    first malformed row raises `DataError` naming ``file:line``."""
    pairs = [pair for _, pair in iter_sts(source)]
    if len(pairs) < 2:
        raise DataError(f"{source}: need at least 2 scored pairs for a correlation, got {len(pairs)}")
    return pairs


def iter_sts(source: str) -> Iterator[tuple[str, Pair]]:
    """Yield ``(location, pair)`` for every scored pair of ``source`` (either layout), so callers
    that check more (a score range, say) can still name ``file:line``."""
    path = Path(source)
    if path.is_file() and path.suffix.lower() in STSB_SUFFIXES and _stsb_layout(path):
        yield from _iter_stsb(path)
    else:
        for where, row in iter_rows(source):
            yield where, pair_from_row(row, where, STS_COLUMNS)


def _iter_stsb(path: Path) -> Iterator[tuple[str, Pair]]:
    """The STS Benchmark layout, split on tabs only; fields past the seventh are ignored. The
    genre (captions, news, forums) becomes the pair's label, which plots colour by."""
    try:
        with path.open(encoding="utf-8") as handle:
            for number, line in enumerate(handle, start=1):
                if not line.strip():
                    continue
                fields = line.rstrip("\r\n").split("\t")
                where = f"{path}:{number}"
                if len(fields) < len(STSB_FIELDS):
                    raise DataError(f"{where}: expected {len(STSB_FIELDS)} tab-separated fields ({', '.join(STSB_FIELDS)}), got {len(fields)}")
                yield where, pair_from_row(dict(zip(STSB_FIELDS, fields)), where, STSB_COLUMNS)
    except UnicodeDecodeError as error:
        raise DataError(f"{path}: not UTF-8 text ({error.reason} at byte {error.start})") from None


def embed_sts(model: Embedder, pairs: list[Pair], batch_size: int = 64, show_progress: bool = True, name: str = "sts") -> tuple[torch.Tensor, torch.Tensor]:
    """Embeddings of each pair's two sentences, (pairs, dim) each. Every distinct sentence is
    encoded once, with no prompt: STS is symmetric, neither side is a query."""
    sentences = list(dict.fromkeys(text for pair in pairs for text in (pair.query, pair.positive)))
    row = {text: i for i, text in enumerate(sentences)}
    with progress_bar(f"embedding {name}", len(sentences), enabled=show_progress) as advance:
        embeddings = model.encode(sentences, None, batch_size, advance)
    return embeddings[[row[pair.query] for pair in pairs]], embeddings[[row[pair.positive] for pair in pairs]]


def score_sts(first: torch.Tensor, second: torch.Tensor, gold: list[float]) -> dict[str, float]:
    """Spearman and Pearson correlation of the pairs' cosine similarity with their gold scores."""
    cosine = F.cosine_similarity(first.float(), second.float(), dim=-1).numpy()
    return {"spearman": spearman(cosine, gold), "pearson": pearson(cosine, gold)}


def evaluate_sts(model: Embedder, pairs: list[Pair], batch_size: int = 64, show_progress: bool = True) -> dict[str, float]:
    """Spearman and Pearson correlation of ``model``'s cosine with the gold scores of ``pairs``."""
    first, second = embed_sts(model, pairs, batch_size, show_progress)
    return score_sts(first, second, [pair.score for pair in pairs])
