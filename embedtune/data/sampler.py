"""Shuffled training batches, by default with no text twice in a batch, resumable mid-epoch."""

from __future__ import annotations

import random
from collections.abc import Iterator

from torch.utils.data import Sampler

from embedtune.data.types import Pair


class ShuffledBatchSampler(Sampler[list[int]]):
    """Shuffled full batches of pair indices, by default with no text (query, positive or used
    negative) repeated within a batch.

    A text that appears twice in a batch is a false negative for the in-batch losses: the loss
    pushes a query away from a copy of its own positive. So each epoch the pairs are shuffled
    (seed + epoch) and dealt greedily into batches; a pair that would repeat a text of the
    batch being filled waits for a later one. Pairs left over when no full batch can be made
    are skipped for this epoch only (``skipped_last_epoch`` says how many).

    The whole epoch's plan is computed before it starts, so ``len()`` is exact: distributed
    ranks built with the same seed get the same plan and the same number of steps, and never
    wait on each other. The plan depends only on (seed, epoch), so a resumed run can `skip` to
    the batch where it stopped. With ``no_duplicates=False`` it is a plain seeded shuffle.
    """

    def __init__(
        self, pairs: list[Pair], batch_size: int, seed: int = 0, negatives_per_query: int | None = None, no_duplicates: bool = True
    ) -> None:
        # only the texts that enter the batch: the query, the positive and the negatives used
        self.texts = [{pair.query, pair.positive, *pair.negatives[:negatives_per_query]} for pair in pairs]
        self.batch_size = batch_size
        self.seed = seed
        self.no_duplicates = no_duplicates
        self.epoch = 0
        self._skip = 0
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
                if not self.no_duplicates or seen.isdisjoint(self.texts[index]):
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

    def skip(self, batches: int) -> None:
        """Start the next iteration ``batches`` into the current epoch's plan (for resuming)."""
        self._skip = batches

    def __len__(self) -> int:
        return len(self._plan)

    def __iter__(self) -> Iterator[list[int]]:
        start, self._skip = self._skip, 0
        yield from self._plan[start:]
        self.set_epoch(self.epoch + 1)
