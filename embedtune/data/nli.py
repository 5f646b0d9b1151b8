"""Supervised SimCSE data: natural language inference triplets (``data=nli``).

Gao, Yao & Chen 2021, "SimCSE: Simple Contrastive Learning of Sentence Embeddings", section 4:
NLI annotations make the best supervised pairs. A premise is the anchor, a hypothesis it
*entails* is the positive, and a hypothesis that *contradicts the same premise* is the hard
negative; with in-batch negatives the loss is InfoNCE over (anchor, positive, hard negative)
triplets. Neutral hypotheses are dropped by default, as in the paper (``neutral=drop``); they
can instead be kept as extra positives or extra hard negatives.

Input: SNLI / MultiNLI rows (jsonl, csv, parquet or ``hf:``) with a premise, a hypothesis and a
gold label, by default the SNLI names ``sentence1``, ``sentence2``, ``gold_label``. Labels are
the words ``entailment`` / ``neutral`` / ``contradiction`` or the Hugging Face ``snli`` /
``multi_nli`` integers 0 / 1 / 2. Rows whose annotators reached no consensus (SNLI's ``-``,
Hugging Face's -1) carry no gold label and are dropped. Every drop is counted in the line the
loader prints.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

from embedtune.console import announce
from embedtune.data.held_out import load_held_out
from embedtune.data.rows import iter_rows, row_field, row_text
from embedtune.data.types import Pair, TrainEvalData
from embedtune.errors import ConfigError, DataError

LABELS = {
    "entailment": "entailment",
    "neutral": "neutral",
    "contradiction": "contradiction",
    0: "entailment",
    1: "neutral",
    2: "contradiction",
}
NO_GOLD_LABEL = ("-", -1)
NEUTRAL_USES = ("drop", "positive", "negative")


@dataclass
class Hypotheses:
    """A premise's hypotheses by gold label, each text once, in file order."""

    entailment: list[str] = field(default_factory=list)
    neutral: list[str] = field(default_factory=list)
    contradiction: list[str] = field(default_factory=list)

    def add(self, label: str, text: str) -> None:
        texts = getattr(self, label)
        if text not in texts:
            texts.append(text)


def read_premises(
    sources: list[str], premise_column: str, hypothesis_column: str, label_column: str, counts: Counter
) -> dict[str, Hypotheses]:
    """Hypotheses grouped by premise text, over all ``sources``; ``counts`` gets the rows read
    and those without a gold label. A bad row raises `DataError` naming ``file:line``."""
    premises: dict[str, Hypotheses] = {}
    for source in sources:
        for where, row in iter_rows(source):
            counts["rows"] += 1
            premise, hypothesis = row_text(row, premise_column, where), row_text(row, hypothesis_column, where)
            raw = row_field(row, label_column, where)
            label = raw.strip().lower() if isinstance(raw, str) else raw
            if label in NO_GOLD_LABEL:
                counts["no gold label"] += 1
                continue
            if isinstance(label, bool) or label not in LABELS:
                raise DataError(
                    f"{where}: column '{label_column}' must be entailment, neutral, contradiction (or 0, 1, 2; '-' or -1 for no gold label), got {raw!r:.40}"
                )
            premises.setdefault(premise, Hypotheses()).add(LABELS[label], hypothesis)
    return premises


NO_ENTAILMENT = "hard negatives whose premise has no entailment"


def triplets(
    premises: dict[str, Hypotheses], neutral: str = "drop", keep_unpaired: bool = False, counts: Counter | None = None
) -> list[Pair]:
    """(premise, entailed hypothesis, its premise's contradictions as hard negatives) pairs.

    ``neutral``: ``drop`` (SimCSE), ``positive`` (neutral hypotheses are extra positives) or
    ``negative`` (extra hard negatives, after the contradictions, so ``negatives.per_query=1``
    still takes a contradiction). ``keep_unpaired``: keep a positive whose premise has no hard
    negative (train with ``negatives.per_query=0`` then); by default it is dropped, as SimCSE
    trains on full triplets only. ``counts`` gets what was dropped and why."""
    if neutral not in NEUTRAL_USES:
        raise ConfigError(f"data.neutral must be one of {', '.join(NEUTRAL_USES)}, got {neutral!r}")
    counts = Counter() if counts is None else counts
    pairs = []
    for premise, hypotheses in premises.items():
        positives = hypotheses.entailment + (hypotheses.neutral if neutral == "positive" else [])
        negatives = tuple(hypotheses.contradiction + (hypotheses.neutral if neutral == "negative" else []))
        if neutral == "drop":
            counts["neutral"] += len(hypotheses.neutral)
        if not positives:  # its contradictions (and neutrals used as negatives) have no query to serve
            counts[NO_ENTAILMENT] += len(negatives)
        for positive in positives:
            if negatives or keep_unpaired:
                pairs.append(Pair(premise, positive, negatives))
            else:
                counts["positives without a hard negative"] += 1
    return pairs


def load(
    train: str | list[str],
    premise_column: str = "sentence1",
    hypothesis_column: str = "sentence2",
    label_column: str = "gold_label",
    neutral: str = "drop",
    keep_unpaired: bool = False,
    eval: str | None = None,
    eval_split: str = "test",
) -> TrainEvalData:
    """The ``data=nli`` config: NLI rows from one file or a list of them, a held-out set
    (retrieval or STS, e.g. STS-B dev) from ``eval``."""
    sources = [train] if isinstance(train, str) else list(train)
    counts: Counter = Counter()
    premises = read_premises(sources, premise_column, hypothesis_column, label_column, counts)
    pairs = triplets(premises, neutral, keep_unpaired, counts)
    if not pairs:
        raise DataError(
            f"{', '.join(sources)}: no (premise, entailment, contradiction) triplets (rows: {counts['rows']}); check data.label_column, or set data.keep_unpaired=true"
        )
    negatives = sum(len(pair.negatives) for pair in pairs)
    dropped = ", ".join(
        f"{counts[reason]:,} {reason}"
        for reason in ("neutral", "no gold label", "positives without a hard negative", NO_ENTAILMENT)
        if counts[reason]
    )
    announce(
        f"data=nli: {counts['rows']:,} rows, {len(premises):,} premises from {', '.join(sources)} -> {len(pairs):,} pairs "
        f"(premise, {'entailment' if neutral != 'positive' else 'entailment or neutral'}) with {negatives:,} hard negatives; "
        f"dropped: {dropped or 'nothing'} (data.neutral={neutral}, data.keep_unpaired={str(keep_unpaired).lower()})"
    )
    return TrainEvalData(train=pairs, eval=load_held_out(eval, eval_split) if eval else None, source=", ".join(sources))
