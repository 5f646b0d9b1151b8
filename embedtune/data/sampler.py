"""Batches in which no text appears twice."""

from __future__ import annotations

import random
from collections.abc import Iterator

from torch.utils.data import Sampler

from embedtune.data.types import Pair


class NoDuplicatesBatchSampler(Sampler[list[int]]):
    """Shuffled batches of pair indices in which no text (query, positive or negative) repeats.

    A text that appears twice in a batch is a false negative for the in-batch losses: the loss
    pushes a query away from a copy of its own positive. So each epoch the pairs are shuffled
    (seed + epoch) and dealt greedily into batches; a pair that would repeat a text of the
    batch being filled waits for a later one. Pairs left over when no full batch can be made
    are skipped for this epoch only (``skipped_last_epoch`` says how many).

    The whole epoch's plan is computed before it starts, so ``len()`` is exact: distributed
    ranks built with the same seed get the same plan and the same number of steps, and never
    wait on each other.
    """

    def __init__(self, pairs: list[Pair], batch_size: int, seed: int = 0, negatives_per_query: int | None = None) -> None:
        # only the texts that enter the batch: the query, the positive and the negatives used
        self.texts = [{pair.query, pair.positive, *pair.negatives[:negatives_per_query]} for pair in pairs]
        self.batch_size = batch_size
        self.seed = seed
        self.epoch = 0
        self.skipped_last_epoch = 0
        self._plan = self._make_plan()

    def _make_plan(self) -> list[list[int]]:
        order = list(range(len(self.texts)))
        random.Random(self.seed + self.epoch).shuffle(order)
        batches, waiting = [], order
        while len(waiting) >= self.batch_size:
            batch, seen, deferred = [], set(), []
            for position, index in enumerate(waiting):
                if len(batch) == self.batch_size:
                    deferred.extend(waiting[position:])
                    break
                if seen.isdisjoint(self.texts[index]):
                    batch.append(index)
                    seen |= self.texts[index]
                else:
                    deferred.append(index)
            if len(batch) < self.batch_size:
                break  # the rest cannot fill a batch without repeating a text
            batches.append(batch)
            waiting = deferred
        self.skipped_last_epoch = len(self.texts) - self.batch_size * len(batches)
        return batches

    def set_epoch(self, epoch: int) -> None:
        if epoch != self.epoch:
            self.epoch = epoch
            self._plan = self._make_plan()

    def __len__(self) -> int:
        return len(self._plan)

    def __iter__(self) -> Iterator[list[int]]:
        yield from self._plan
        self.set_epoch(self.epoch + 1)
