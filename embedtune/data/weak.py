"""Weak (query, document) pairs cut from plain documents, for the pre-training stage (``data=weak``).

Large embedders are pre-trained, before any labelled fine-tuning, on pairs that documents carry
for free: (title, passage) and (section title, passage) are among E5's CCPairs (Wang et al.
2022, "Text Embeddings by Weakly-Supervised Contrastive Pre-training") and GTE's pre-training
pairs (Li et al. 2023); (first sentence, rest) is a fixed-position Inverse Cloze Task (Lee et
al. 2019, ORQA: a sentence is the query, its context the document). Each pair is a weak signal,
but in-batch negatives over many of them teach a model a domain's vocabulary without a single
labelled query. Three kinds are cut here:

- ``title_body``: a document's title and its body;
- ``first_sentence_rest``: the body's first sentence and the rest of the body (the first
  sentence is taken to end at the first ``.``, ``!`` or ``?`` followed by whitespace once it
  has ``min_query_words`` words, so "e.g." does not end it);
- ``heading_section``: each markdown heading, written as its path of headings ("Guide >
  Install > From source", so "Usage" in two files are not the same query), and the text under
  it up to the next heading.

Sources: a folder of ``.md`` / ``.markdown`` / ``.txt`` files (searched recursively), or any file
`embedtune.data.files.iter_rows` reads with a title and a text column (a BEIR ``corpus.jsonl``
works as is). A markdown file's title is its front matter's ``title:`` or else its first line
when that is a level-1 heading; a text file's title is its first line when a blank line follows
it. Every drop (a query shorter than ``min_query_words``, a heading with no text under it, a
repeated pair) is counted in the line the loader prints.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from embedtune.console import announce
from embedtune.data.held_out import load_held_out
from embedtune.data.rows import iter_rows, row_text
from embedtune.data.types import Pair, TrainEvalData
from embedtune.errors import ConfigError, DataError

KINDS = ("title_body", "first_sentence_rest", "heading_section")
MARKDOWN_SUFFIXES = {".md", ".markdown"}
TEXT_SUFFIXES = MARKDOWN_SUFFIXES | {".txt"}
_HEADING = re.compile(r"^(#{1,6})\s+(.+?)\s*#*\s*$")  # an ATX heading: level, text
_FENCE = re.compile(r"^\s*(```|~~~)")
_FRONT_MATTER = re.compile(r"\A---\s*\n(.*?)\n---\s*(?:\n|\Z)", re.DOTALL)
_SENTENCE_END = re.compile(r"[.!?](?=\s)")
_BLANK_LINES = re.compile(r"\n\s*\n(\s*\n)+")


@dataclass(frozen=True)
class Document:
    """A document as the cutters see it: its title ("" when it has none) and its body (markdown
    kept, so headings can be found)."""

    title: str
    body: str


# --- reading documents -------------------------------------------------------------------


def read_documents(source: str, title_column: str = "title", text_column: str = "text") -> Iterator[Document]:
    """The documents of a folder of text / markdown files, or of a file of rows."""
    path = Path(source)
    if path.is_dir():
        files = sorted(p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in TEXT_SUFFIXES)
        if not files:
            raise DataError(f"{source}: no {', '.join(sorted(TEXT_SUFFIXES))} files in this folder")
        for file in files:
            yield _file_document(file)
        return
    for where, row in iter_rows(source):
        title = row.get(title_column)
        if title is not None and not isinstance(title, str):
            raise DataError(f"{where}: column '{title_column}' must be a string, got {type(title).__name__}")
        yield Document((title or "").strip(), row_text(row, text_column, where).strip())


def _file_document(path: Path) -> Document:
    try:
        text = path.read_text(encoding="utf-8").replace("\r\n", "\n")
    except UnicodeDecodeError as error:
        raise DataError(f"{path}: not UTF-8 text ({error.reason} at byte {error.start})") from None
    title = ""
    if path.suffix.lower() in MARKDOWN_SUFFIXES:
        front = _FRONT_MATTER.match(text)
        if front:
            text = text[front.end() :]
            title = next(
                (line.split(":", 1)[1].strip().strip("'\"") for line in front.group(1).splitlines() if line.startswith("title:")), ""
            )
        first, _, rest = text.lstrip("\n").partition("\n")
        heading = _HEADING.match(first)
        if not title and heading and len(heading.group(1)) == 1:
            title, text = heading.group(2), rest
    else:
        first, blank, rest = text.lstrip("\n").partition("\n\n")
        if blank and first.strip() and "\n" not in first.strip():
            title, text = first.strip(), rest
    return Document(title, text.strip())


# --- cutting pairs -----------------------------------------------------------------------


def _words(text: str) -> int:
    return len(text.split())


def _lines(body: str) -> Iterator[tuple[str, re.Match | None]]:
    """Each line of ``body`` with its heading match, None for text. Lines inside fenced code
    blocks are text: a ``#`` there is a comment, not a heading."""
    in_fence = False
    for line in body.splitlines():
        if _FENCE.match(line):
            in_fence = not in_fence
        yield line, None if in_fence else _HEADING.match(line)


def _prose(body: str) -> str:
    """The body without its markdown heading lines (and the blank lines they leave doubled)."""
    text = "\n".join(line for line, heading in _lines(body) if not heading)
    return _BLANK_LINES.sub("\n\n", text).strip()


def first_sentence_rest(body: str, min_words: int = 3) -> tuple[str, str] | None:
    """(first sentence, rest) of ``body``'s prose, or None when no sentence of ``min_words``
    words or more ends before some rest."""
    prose = _prose(body)
    for end in _SENTENCE_END.finditer(prose):
        first = " ".join(prose[: end.end()].split())
        if _words(first) >= min_words:
            rest = prose[end.end() :].strip()
            return (first, rest) if rest else None
    return None


def heading_sections(title: str, body: str) -> Iterator[tuple[str, str]]:
    """(heading path, text under the heading) for every markdown heading of ``body``; a heading
    with no text before the next heading yields an empty section."""
    path: list[tuple[int, str]] = [(1, title)] if title else []
    heading: str | None = None
    lines: list[str] = []
    for line, match in _lines(body):
        if not match:
            lines.append(line)
            continue
        if heading is not None:
            yield heading, "\n".join(lines).strip()
        level = len(match.group(1))
        path = [(lvl, text) for lvl, text in path if lvl < level] + [(level, match.group(2))]
        heading, lines = " > ".join(text for _, text in path), []
    if heading is not None:
        yield heading, "\n".join(lines).strip()


def cut_pairs(document: Document, kinds: tuple[str, ...] = KINDS, min_query_words: int = 3, counts: Counter | None = None) -> list[Pair]:
    """The weak pairs of one document, of the chosen ``kinds``; ``counts`` gets how many pairs
    of each kind were cut and what was dropped."""
    counts = Counter() if counts is None else counts
    found: list[tuple[str, str, str]] = []  # (kind, query, document)
    if "title_body" in kinds and document.title and document.body:
        found.append(("title_body", document.title, document.body))
    if "first_sentence_rest" in kinds:
        split = first_sentence_rest(document.body, min_query_words)
        if split:
            found.append(("first_sentence_rest", *split))
    if "heading_section" in kinds:
        for heading, section in heading_sections(document.title, document.body):
            if section:
                found.append(("heading_section", heading, section))
            else:
                counts["headings with no text under them"] += 1
    pairs = []
    for kind, query, text in found:
        if _words(query) < min_query_words:
            counts[f"{kind} queries under {min_query_words} words"] += 1
            continue
        counts[kind] += 1
        pairs.append(Pair(query, text))
    return pairs


def load(
    train: str | list[str],
    kinds: list[str] | tuple[str, ...] = KINDS,
    title_column: str = "title",
    text_column: str = "text",
    min_query_words: int = 3,
    eval: str | None = None,
    eval_split: str = "test",
) -> TrainEvalData:
    """The ``data=weak`` config: weak pairs from one source or a list of them (folders of
    documents, files of rows), a held-out set (retrieval or STS) from ``eval``."""
    unknown = sorted(set(kinds) - set(KINDS))
    if unknown or not kinds:
        raise ConfigError(f"data.kinds must be a non-empty list of {', '.join(KINDS)}, got {list(kinds)}")
    if not (isinstance(min_query_words, int) and min_query_words >= 1):
        raise ConfigError(f"data.min_query_words must be an integer >= 1, got {min_query_words!r}")
    sources = [train] if isinstance(train, str) else list(train)
    counts: Counter = Counter()
    pairs: list[Pair] = []
    documents = 0
    for source in sources:
        for document in read_documents(source, title_column, text_column):
            documents += 1
            cut = cut_pairs(document, tuple(kinds), min_query_words, counts)
            if not cut:
                counts["documents with no pair"] += 1
            pairs.extend(cut)
    unique = list(dict.fromkeys(pairs))
    counts["repeated pairs"] = len(pairs) - len(unique)
    if len(unique) < 2:
        raise DataError(f"{', '.join(sources)}: {documents} document(s) gave {len(unique)} weak pair(s); need at least 2")
    made = ", ".join(f"{counts[kind]:,} {kind}" for kind in kinds)
    dropped = ", ".join(f"{value:,} {reason}" for reason, value in counts.items() if reason not in KINDS and value)
    announce(
        f"data=weak: {documents:,} documents from {', '.join(sources)} -> {len(unique):,} pairs ({made}); dropped: {dropped or 'nothing'}"
    )
    return TrainEvalData(train=unique, eval=load_held_out(eval, eval_split) if eval else None, source=", ".join(sources))
