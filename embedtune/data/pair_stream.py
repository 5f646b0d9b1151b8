"""Streaming, multi-source training input for pre-training on pair sets larger than memory.

Weakly-supervised pre-training (E5, GTE, Qwen3-Embedding, nomic) mixes many sources — titles
and bodies, questions and answers, code and docstrings — and draws each batch from a *single*
source. One-source batches keep the task uniform within a batch, so the in-batch negatives are
hard (same domain) rather than trivially told apart by domain (Li et al. 2023, GTE; Nussbaum et
al. 2024, nomic-embed). The source of each batch is drawn with the configured weights.

Rows are read lazily (jsonl line by line, parquet by record batch, globs of shards in order) and
validated as they arrive: a malformed row stops the run naming its file and line. A source that
runs out starts again from its first shard, so a stream never ends: training length is set by
``train.max_steps``.

Distributed: every process draws the same sequence of sources and reads the same rows (same
seed), forms the same global batch of ``batch_size x world_size`` pairs and keeps its own slice.
Each rank parses every row, which costs CPU but needs no coordination and keeps ranks in step.
"""

from __future__ import annotations

import glob
import itertools
import random
from collections.abc import Iterator
from dataclasses import dataclass, field

from torch.utils.data import IterableDataset

from embedtune.data.held_out import load_held_out
from embedtune.data.rows import Columns, iter_rows, pair_from_row
from embedtune.data.types import Pair, TrainEvalData
from embedtune.errors import DataError


@dataclass(frozen=True)
class Source:
    """One training source: a file, a glob of shards (``data/part-*.jsonl``) or ``hf:NAME``."""

    path: str
    weight: float = 1.0
    name: str = ""

    def files(self) -> list[str]:
        if self.path.startswith("hf:"):
            return [self.path]
        shards = sorted(glob.glob(self.path))
        if not shards:
            raise DataError(f"{self.path}: no such file (or no file matches the pattern)")
        return shards


def _endless_pairs(source: Source, columns: Columns) -> Iterator[Pair]:
    """The source's pairs, shard by shard, starting over when all are read."""
    shards = source.files()
    for _ in itertools.count():
        count = 0
        for shard in shards:
            for where, row in iter_rows(shard):
                count += 1
                yield pair_from_row(row, where, columns)
        if count == 0:
            raise DataError(f"{source.path}: no rows")


@dataclass
class MixedPairStream(IterableDataset):
    """Yields batches (lists of `Pair`) of ``batch_size`` pairs, each batch from one source.

    Within a batch no text repeats (the query, the positive and the first
    ``negatives_per_query`` negatives): a row that would repeat one waits for the next batch of
    its source, as `NoDuplicatesBatchSampler` does for in-memory data.
    """

    sources: list[Source]
    columns: Columns
    batch_size: int
    seed: int = 0
    rank: int = 0
    world_size: int = 1
    negatives_per_query: int = 0
    start_batch: int = 0  # batches to draw and drop first: where a resumed run continues
    batches_per_source: dict[str, int] = field(default_factory=dict)

    def __iter__(self) -> Iterator[list[Pair]]:
        rng = random.Random(self.seed)
        streams = [_endless_pairs(source, self.columns) for source in self.sources]
        waiting: list[list[Pair]] = [[] for _ in self.sources]
        weights = [source.weight for source in self.sources]
        global_size = self.batch_size * self.world_size
        for number in itertools.count():
            chosen = rng.choices(range(len(self.sources)), weights)[0]
            batch, seen, deferred = [], set(), []
            for pair in itertools.chain(waiting[chosen], streams[chosen]):
                texts = {pair.query, pair.positive, *pair.negatives[: self.negatives_per_query]}
                if seen.isdisjoint(texts):
                    batch.append(pair)
                    seen |= texts
                    if len(batch) == global_size:
                        break
                else:
                    deferred.append(pair)
                if len(deferred) > 10 * global_size:
                    raise DataError(f"{self.sources[chosen].path}: cannot fill a batch of {global_size} without repeating a text")
            waiting[chosen] = deferred + waiting[chosen][len(batch) + len(deferred) :]
            name = self.sources[chosen].name or self.sources[chosen].path
            self.batches_per_source[name] = self.batches_per_source.get(name, 0) + 1
            if number >= self.start_batch:
                yield batch[self.rank * self.batch_size : (self.rank + 1) * self.batch_size]


def load(
    sources: list[dict],
    eval: str | None = None,
    eval_split: str = "test",
    query_column: str = "query",
    positive_column: str = "positive",
    negatives_column: str | None = "negatives",
    query_prompt: str = "",
    document_prompt: str = "",
) -> TrainEvalData:
    """The ``data=stream`` config: weighted sources read lazily; the eval set in memory."""
    if not sources:
        raise DataError("data.sources: give at least one source ({path: ..., weight: ...})")
    parsed = []
    for index, spec in enumerate(sources):
        if not isinstance(spec, dict) or "path" not in spec:
            raise DataError(f"data.sources[{index}]: expected {{path: FILE_OR_GLOB, weight: NUMBER}}, got {spec!r:.60}")
        source = Source(str(spec["path"]), float(spec.get("weight", 1.0)), str(spec.get("name", "")))
        if not source.weight > 0:
            raise DataError(f"data.sources[{index}]: weight must be > 0, got {source.weight}")
        source.files()  # fail now, not at the first batch, when a path matches nothing
        parsed.append(source)
    columns = Columns(query_column, positive_column, negatives_column)
    stream = MixedPairStream(parsed, columns, batch_size=0)  # batch size and rank set by the loop
    return TrainEvalData(
        train=[],
        stream=stream,
        eval=load_held_out(eval, eval_split, columns) if eval else None,
        query_prompt=query_prompt,
        document_prompt=document_prompt,
        source=", ".join(source.path for source in parsed),
    )
