"""Unsupervised SimCSE data: raw texts become (text, text) pairs (``data=simcse``).

Gao, Yao & Chen 2021, "SimCSE: Simple Contrastive Learning of Sentence Embeddings", section 3:
each text is encoded twice with independent dropout masks; the two views are the positive pair
and every other text of the batch is a negative (InfoNCE, tau = 0.05). Dropout is the only
augmentation, and the paper found it beats cropping, word deletion and synonym swaps.

Here a text is one `Pair` whose query and positive are the same string. The training loop
encodes the batch's queries and its documents in two separate forward passes, so each view gets
its own dropout masks; GradCache records and replays each pass's RNG state separately, so it
reproduces both views. The no-duplicates sampler looks at the set of a pair's texts, so a pair
never collides with itself, and InfoNCE masks nothing by text. Texts are deduplicated here: a
repeated text in a batch would be a false negative of its copy.

Sources: a ``.txt`` file (one text per line, as SimCSE's ``wiki1m_for_simcse.txt``), any file
`embedtune.data.files.iter_rows` reads (a ``text_column`` per row; a BEIR ``corpus.jsonl`` works
as is), or scored pairs (the STS Benchmark layout or ``sentence1, sentence2, score`` columns:
both sentences of every pair; the scores are not used).
"""

from __future__ import annotations

from pathlib import Path

from embedtune.console import announce
from embedtune.data.held_out import load_held_out
from embedtune.data.rows import iter_rows, row_text
from embedtune.data.sts_files import is_sts_file, iter_sts
from embedtune.data.types import Pair, TrainEvalData
from embedtune.errors import DataError


def read_texts(source: str, text_column: str = "text") -> list[str]:
    """Every text of ``source`` in file order, repeats included; a bad row raises `DataError`
    naming ``file:line``. Blank lines of a ``.txt`` file separate nothing and are not texts."""
    path = Path(source)
    if path.suffix.lower() == ".txt":
        return _read_lines(path)
    if is_sts_file(source):
        return [text for _, pair in iter_sts(source) for text in (pair.query, pair.positive)]
    return [row_text(row, text_column, where) for where, row in iter_rows(source)]


def _read_lines(path: Path) -> list[str]:
    if not path.is_file():
        raise DataError(f"{path}: no such file")
    try:
        with path.open(encoding="utf-8") as handle:
            return [line.strip() for line in handle if line.strip()]
    except UnicodeDecodeError as error:
        raise DataError(f"{path}: not UTF-8 text ({error.reason} at byte {error.start})") from None


def simcse_pairs(texts: list[str]) -> list[Pair]:
    """One (text, text) pair per distinct text, in first-seen order."""
    return [Pair(text, text) for text in dict.fromkeys(texts)]


def load(train: str | list[str], text_column: str = "text", eval: str | None = None, eval_split: str = "test") -> TrainEvalData:
    """The ``data=simcse`` config: texts from one source or a list of them, a held-out set
    (retrieval or STS) from ``eval``."""
    sources = [train] if isinstance(train, str) else list(train)
    texts = [text for source in sources for text in read_texts(source, text_column)]
    pairs = simcse_pairs(texts)
    if len(pairs) < 2:
        raise DataError(f"{', '.join(sources)}: unsupervised SimCSE needs at least 2 distinct texts, got {len(pairs)}")
    announce(
        f"data=simcse: {len(texts):,} texts from {', '.join(sources)} -> {len(pairs):,} (text, text) pairs; {len(texts) - len(pairs):,} repeated texts merged"
    )
    return TrainEvalData(train=pairs, eval=load_held_out(eval, eval_split) if eval else None, source=", ".join(sources))
