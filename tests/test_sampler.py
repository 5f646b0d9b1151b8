"""The no-duplicates batch sampler: no text twice in a batch, exact length, same plan per seed."""

from embedtune.data.sampler import ShuffledBatchSampler
from embedtune.data.types import Pair


def pairs_with_repeats():
    # 30 pairs, but only 10 distinct queries (each asked 3 times with different positives) and a
    # shared hard negative among every fifth pair.
    return [Pair(f"query {i % 10}", f"positive {i}", ("shared negative",) if i % 5 == 0 else (f"negative {i}",)) for i in range(30)]


def test_no_text_repeats_within_a_batch_and_each_pair_used_once():
    pairs = pairs_with_repeats()
    sampler = ShuffledBatchSampler(pairs, batch_size=4, seed=3)
    batches = list(sampler)
    for batch in batches:
        texts = [text for i in batch for text in (pairs[i].query, pairs[i].positive, *pairs[i].negatives)]
        assert len(texts) == len(set(texts))
        assert len(batch) == 4
    used = [i for batch in batches for i in batch]
    assert len(used) == len(set(used))
    assert sampler.skipped_last_epoch == 30 - len(used)


def test_len_is_exact_and_epochs_reshuffle():
    sampler = ShuffledBatchSampler(pairs_with_repeats(), batch_size=4, seed=0)
    expected = len(sampler)
    first = list(sampler)
    assert len(first) == expected
    second_len = len(sampler)
    second = list(sampler)
    assert len(second) == second_len and second != first


def test_same_seed_same_plan_as_distributed_ranks_need():
    a = list(ShuffledBatchSampler(pairs_with_repeats(), batch_size=4, seed=7))
    b = list(ShuffledBatchSampler(pairs_with_repeats(), batch_size=4, seed=7))
    assert a == b


def test_distinct_texts_use_every_full_batch():
    pairs = [Pair(f"q{i}", f"p{i}") for i in range(10)]
    sampler = ShuffledBatchSampler(pairs, batch_size=3)
    assert len(sampler) == 3 and sampler.skipped_last_epoch == 1


def test_only_negatives_that_enter_the_batch_count():
    pairs = [Pair(f"q{i}", f"p{i}", ("shared negative",)) for i in range(8)]
    assert len(ShuffledBatchSampler(pairs, batch_size=4, negatives_per_query=1)) == 0  # shared text in every pair
    assert len(ShuffledBatchSampler(pairs, batch_size=4, negatives_per_query=0)) == 2


def test_plain_shuffle_and_skip_resume_the_same_plan():
    pairs = pairs_with_repeats()
    plain = ShuffledBatchSampler(pairs, batch_size=4, seed=2, no_duplicates=False)
    assert len(plain) == 7 and len({i for b in plain for i in b}) == 28  # 30 pairs, 7 full batches
    full = list(ShuffledBatchSampler(pairs, batch_size=4, seed=2))
    resumed = ShuffledBatchSampler(pairs, batch_size=4, seed=2)
    resumed.skip(3)
    assert list(resumed) == full[3:]
