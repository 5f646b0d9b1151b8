"""Rows of the user's files, checked one by one: the reader every data kind and command shares.

Supported sources: ``.jsonl`` / ``.json`` (one object per line), ``.csv`` / ``.tsv`` (header row),
``.parquet``, and any Hugging Face ``datasets`` source written as ``hf:NAME[:SPLIT]`` (a local
dataset script or folder, or a cached hub dataset). Every row is validated: a malformed row
stops the run with the file, the row number and the reason. Nothing is silently dropped.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from embedtune.data.types import Pair
from embedtune.errors import DataError
from embedtune.fileio import write_text_atomic

TABULAR_SUFFIXES = {".csv": ",", ".tsv": "\t"}


@dataclass(frozen=True)
class Columns:
    """Which source columns hold the query, the positive and the (optional) hard negatives."""

    query: str = "query"
    positive: str = "positive"
    negatives: str | None = "negatives"
    score: str | None = None  # gold similarity (STS-style scored pairs)
    label: str | None = None  # class label (supervised contrastive)
    teacher_positive: str | None = "positive_score"  # teacher's score of the positive (distillation)
    teacher_negatives: str | None = "negative_scores"  # teacher's scores of the negatives, in order


def iter_rows(source: str) -> Iterator[tuple[str, dict[str, Any]]]:
    """Yield ``(location, row)`` for every row of a file or ``hf:`` dataset.

    ``location`` is ``"path:line"`` (1-based; for csv the header is line 1) so errors can point
    at the exact row.
    """
    if source.startswith("hf:"):
        yield from _iter_hf_rows(source)
        return
    path = Path(source)
    if path.is_dir():
        raise DataError(f"{source}: is a folder, expected a file (.jsonl, .json, .csv, .tsv or .parquet)")
    if not path.is_file():
        raise DataError(f"{source}: no such file")
    suffix = path.suffix.lower()
    try:
        if suffix == ".jsonl":
            yield from _iter_jsonl(path)
        elif suffix == ".json":
            yield from _iter_json(path)
        elif suffix in TABULAR_SUFFIXES:
            yield from _iter_tabular(path, TABULAR_SUFFIXES[suffix])
        elif suffix == ".parquet":
            yield from _iter_parquet(path)
        else:
            raise DataError(f"{source}: unsupported file type '{suffix}' (use .jsonl, .json, .csv, .tsv, .parquet or hf:NAME)")
    except OSError as error:
        raise DataError(f"{source}: cannot read file ({error.strerror or error})") from None
    except UnicodeDecodeError as error:
        raise DataError(f"{source}: not UTF-8 text ({error.reason} at byte {error.start})") from None


def _iter_jsonl(path: Path) -> Iterator[tuple[str, dict[str, Any]]]:
    with path.open(encoding="utf-8") as handle:
        for number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as error:
                raise DataError(f"{path}:{number}: invalid JSON ({error.msg} at column {error.colno})") from None
            if not isinstance(row, dict):
                raise DataError(f"{path}:{number}: expected a JSON object, got {type(row).__name__}")
            yield f"{path}:{number}", row


def _iter_json(path: Path) -> Iterator[tuple[str, dict[str, Any]]]:
    """A ``.json`` file: one JSON array of objects, or JSON Lines under another name."""
    text = path.read_text(encoding="utf-8")
    try:
        value = json.loads(text)
    except json.JSONDecodeError as error:
        if error.msg == "Extra data":  # more than one value: JSON Lines
            yield from _iter_jsonl(path)
            return
        raise DataError(f"{path}:{error.lineno}: invalid JSON ({error.msg} at column {error.colno})") from None
    rows = value if isinstance(value, list) else [value]
    for number, row in enumerate(rows, start=1):
        if not isinstance(row, dict):
            raise DataError(f"{path}: item {number} is {type(row).__name__}, expected a JSON object (or a list of them)")
        yield f"{path}:item {number}", row


def _iter_tabular(path: Path, delimiter: str) -> Iterator[tuple[str, dict[str, Any]]]:
    with path.open(encoding="utf-8", newline="") as handle:
        reader = csv.DictReader(handle, delimiter=delimiter)
        if not reader.fieldnames:
            raise DataError(f"{path}: empty file (expected a header row)")
        for row in reader:
            where = f"{path}:{reader.line_num}"
            if None in row:
                raise DataError(f"{where}: more fields than the header's {len(reader.fieldnames)}")
            yield where, row


def _iter_parquet(path: Path) -> Iterator[tuple[str, dict[str, Any]]]:
    import pyarrow.parquet as pq

    try:
        parquet = pq.ParquetFile(path)
    except Exception as error:  # pyarrow raises several unrelated types for a bad file
        raise DataError(f"{path}: not a readable parquet file ({error})") from None
    number = 0
    for record_batch in parquet.iter_batches(batch_size=4096):  # streams: memory stays at one batch
        for row in record_batch.to_pylist():
            number += 1
            yield f"{path}:row {number}", row


def _iter_hf_rows(source: str) -> Iterator[tuple[str, dict[str, Any]]]:
    import datasets

    name, _, split = source[3:].partition(":")
    try:
        dataset = datasets.load_dataset(name, split=split or "train")
    except Exception as error:  # datasets raises many types; the user needs the message
        raise DataError(f"{source}: cannot load dataset ({type(error).__name__}: {error})") from None
    for number, row in enumerate(dataset, start=1):
        yield f"{source}:row {number}", row


def row_field(row: dict[str, Any], column: str, where: str) -> Any:
    """``row[column]``, or a `DataError` naming ``where`` and the columns the row does have."""
    if column not in row:
        raise DataError(f"{where}: missing column '{column}' (row has: {', '.join(map(str, row)) or 'nothing'})")
    return row[column]


def row_text(row: dict[str, Any], column: str, where: str) -> str:
    """``row[column]`` as a non-empty string, or a `DataError` naming ``where`` and the reason."""
    value = row_field(row, column, where)
    if not isinstance(value, str):
        raise DataError(f"{where}: column '{column}' must be a string, got {type(value).__name__}")
    if not value.strip():
        raise DataError(f"{where}: column '{column}' is empty")
    return value


def _negatives(row: dict[str, Any], column: str, where: str) -> tuple[str, ...]:
    value = row[column]
    if value is None or value == "":
        return ()
    if isinstance(value, str) and value.lstrip().startswith("["):  # csv cells carry lists as JSON
        try:
            value = json.loads(value)
        except json.JSONDecodeError as error:
            raise DataError(
                f"{where}: column '{column}' is not a valid JSON list ({error.msg} at character {error.pos + 1} of the cell)"
            ) from None
    if isinstance(value, str):
        raise DataError(f"{where}: column '{column}' must be a list of strings, got one string (write it as a list: [\"...\"])")
    if not isinstance(value, (list, tuple)):
        raise DataError(f"{where}: column '{column}' must be a list of strings, got {type(value).__name__}")
    for index, item in enumerate(value):
        if not isinstance(item, str) or not item.strip():
            raise DataError(f"{where}: column '{column}' item {index} must be a non-empty string, got {item!r:.40}")
    return tuple(value)


def _number(value: Any, column: str, where: str) -> float:
    if isinstance(value, str):  # csv cells
        try:
            value = float(value)
        except ValueError:
            raise DataError(f"{where}: column '{column}' must be a number, got {value!r:.40}") from None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value != value:
        raise DataError(f"{where}: column '{column}' must be a number, got {value!r:.40}")
    return float(value)


def _teacher_scores(row: dict[str, Any], columns: Columns, negatives: tuple[str, ...], where: str) -> tuple[float, ...]:
    if not columns.teacher_positive or columns.teacher_positive not in row:
        return ()
    positive = _number(row[columns.teacher_positive], columns.teacher_positive, where)
    values = row.get(columns.teacher_negatives, []) if columns.teacher_negatives else []
    if isinstance(values, str):
        try:
            values = json.loads(values)
        except json.JSONDecodeError:
            raise DataError(f"{where}: column '{columns.teacher_negatives}' is not a valid JSON list") from None
    if not isinstance(values, (list, tuple)) or len(values) != len(negatives):
        raise DataError(f"{where}: column '{columns.teacher_negatives}' must list one score per negative ({len(negatives)})")
    return (positive, *(_number(value, columns.teacher_negatives, where) for value in values))


def pair_from_row(row: dict[str, Any], where: str, columns: Columns) -> Pair:
    """Validate one row and turn it into a `Pair`, or raise `DataError` naming ``where``."""
    query = row_text(row, columns.query, where)
    positive = row_text(row, columns.positive, where)
    negatives = _negatives(row, columns.negatives, where) if columns.negatives and columns.negatives in row else ()
    score = _number(row_field(row, columns.score, where), columns.score, where) if columns.score else None
    label = row_field(row, columns.label, where) if columns.label else None
    if columns.label and (label is None or str(label).strip() == ""):
        raise DataError(f"{where}: column '{columns.label}' is empty")
    label = str(label) if label is not None else None
    return Pair(query, positive, negatives, score, label, _teacher_scores(row, columns, negatives, where))


def load_pairs(source: str, columns: Columns = Columns()) -> list[Pair]:
    """Every pair in ``source``; the first malformed row raises `DataError`."""
    pairs = [pair_from_row(row, where, columns) for where, row in iter_rows(source)]
    if not pairs:
        raise DataError(f"{source}: no rows")
    return pairs


def write_pairs(pairs: list[Pair], path: str | Path) -> None:
    """Write pairs as jsonl (query, positive, negatives), the format `load_pairs` reads back."""
    lines = [json.dumps({"query": p.query, "positive": p.positive, "negatives": list(p.negatives)}) for p in pairs]
    write_text_atomic(path, "".join(line + "\n" for line in lines))
