"""The documents `embedtune synth` writes pairs for, from any of the layouts users have them in:
a BEIR folder or its ``corpus.jsonl``, a rows file (jsonl / json / csv / tsv / parquet) with a
text column, or a folder of ``.txt`` / ``.md`` files. Each document keeps a stable id, by which a
resumed run knows what it has done."""

from __future__ import annotations

import random
from dataclasses import dataclass
from pathlib import Path

from embedtune.data.held_out import document_text
from embedtune.data.rows import iter_rows, row_text
from embedtune.errors import DataError

TEXT_SUFFIXES = (".txt", ".md")


@dataclass(frozen=True)
class Document:
    """One document: its id (BEIR ``_id``, a row's ``_id`` / ``id`` or row number, a file's path
    in its folder) and its text (a BEIR title joined in front of the text, as BEIR does)."""

    id: str
    text: str


def corpus_file(source: str) -> Path | None:
    """The rows file behind ``source``: the file itself, or a BEIR folder's ``corpus.jsonl``;
    None for a folder of text files."""
    path = Path(source)
    if path.is_dir():
        return path / "corpus.jsonl" if (path / "corpus.jsonl").is_file() else None
    return path


def load_documents(source: str, column: str = "text") -> list[Document]:
    """Every document of ``source`` in file order, or a `DataError` naming the file and the
    reason (no such file, an empty text, a repeated id, no document at all)."""
    path = Path(source)
    if not path.exists():
        raise DataError(f"{source}: no such file or folder")
    rows_file = corpus_file(source)
    documents = _rows_documents(str(rows_file), column) if rows_file else _text_documents(path)
    if not documents:
        raise DataError(f"{source}: no documents")
    seen: set[str] = set()
    for document in documents:
        if document.id in seen:
            raise DataError(f"{source}: document id '{document.id}' appears twice (ids must be unique to resume a run)")
        seen.add(document.id)
    return documents


def _rows_documents(source: str, column: str) -> list[Document]:
    documents = []
    for number, (where, row) in enumerate(iter_rows(source), start=1):
        text = document_text(row, where) if column == "text" and "title" in row else row_text(row, column, where)
        identifier = row.get("_id", row.get("id", number))
        documents.append(Document(str(identifier), text))
    return documents


def _text_documents(folder: Path) -> list[Document]:
    files = sorted(path for path in folder.rglob("*") if path.is_file() and path.suffix.lower() in TEXT_SUFFIXES)
    if not files:
        raise DataError(f"{folder}: no corpus.jsonl and no .txt or .md files")
    documents = []
    for path in files:
        try:
            text = path.read_text(encoding="utf-8").strip()
        except UnicodeDecodeError as error:
            raise DataError(f"{path}: not UTF-8 text (at byte {error.start})") from None
        if not text:
            raise DataError(f"{path}: empty document")
        documents.append(Document(path.relative_to(folder).as_posix(), text))
    return documents


def sample_documents(documents: list[Document], max_docs: int | None, seed: int) -> list[Document]:
    """A seeded uniform sample of ``max_docs`` documents, kept in corpus order (all of them when
    ``max_docs`` is None or not smaller than the corpus): the same seed picks the same ones."""
    if max_docs is None or max_docs >= len(documents):
        return documents
    chosen = sorted(random.Random(seed).sample(range(len(documents)), max_docs))
    return [documents[i] for i in chosen]
