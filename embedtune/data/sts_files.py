"""STS files: scored sentence pairs, read as `Pair` (``query`` = sentence1, ``positive`` =
sentence2, ``score`` = the gold similarity), for training (``data=sts``) and held-out sets alike.

Two layouts are read:

- the STS Benchmark distribution (``sts-dev.csv``): tab-separated, no header and no quoting, the
  fields genre, source, year, id, score, sentence1, sentence2; some rows carry extra fields,
  which are ignored. It must be split on tabs only: its sentences hold unbalanced quotes that
  a quote-aware csv reader would merge across lines;
- any file `embedtune.data.rows.iter_rows` reads (jsonl, csv with a header, parquet, ``hf:``)
  with the columns ``sentence1``, ``sentence2`` and ``score``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from pathlib import Path

from embedtune.data.rows import Columns, iter_rows, pair_from_row
from embedtune.data.types import Pair
from embedtune.errors import DataError

STS_COLUMNS = Columns(query="sentence1", positive="sentence2", negatives=None, score="score", teacher_positive=None)
STSB_COLUMNS = dataclasses.replace(STS_COLUMNS, label="genre")
STSB_FIELDS = ("genre", "source", "year", "id", "score", "sentence1", "sentence2")
STSB_SUFFIXES = (".csv", ".tsv")


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
    if len({pair.score for pair in pairs}) == 1:
        raise DataError(
            f"{source}: every gold score is {pairs[0].score:g}, so no correlation with them is defined; an STS file needs differing scores"
        )
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
                    raise DataError(
                        f"{where}: expected {len(STSB_FIELDS)} tab-separated fields ({', '.join(STSB_FIELDS)}), got {len(fields)}"
                    )
                yield where, pair_from_row(dict(zip(STSB_FIELDS, fields)), where, STSB_COLUMNS)
    except UnicodeDecodeError as error:
        raise DataError(f"{path}: not UTF-8 text ({error.reason} at byte {error.start})") from None
