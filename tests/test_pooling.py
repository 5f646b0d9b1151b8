"""Pooling against hand-computed values; padding must never leak in, on either side."""

import pytest
import torch

from embedtune.pooling import POOLINGS, cls, last_token, max, mean

# Two sequences of 3 positions, dim 2. Row 0 has 2 real tokens (right-padded), row 1 has 3.
HIDDEN = torch.tensor(
    [
        [[1.0, 2.0], [3.0, 6.0], [100.0, -100.0]],
        [[0.0, 1.0], [2.0, 3.0], [4.0, -5.0]],
    ]
)
RIGHT_PADDED = torch.tensor([[1, 1, 0], [1, 1, 1]])


def test_mean_ignores_padding():
    assert torch.equal(mean(HIDDEN, RIGHT_PADDED), torch.tensor([[2.0, 4.0], [2.0, -1 / 3]]))


def test_max_ignores_padding():
    assert torch.equal(max(HIDDEN, RIGHT_PADDED), torch.tensor([[3.0, 6.0], [4.0, 3.0]]))


def test_cls_is_first_position():
    assert torch.equal(cls(HIDDEN, RIGHT_PADDED), torch.tensor([[1.0, 2.0], [0.0, 1.0]]))


def test_last_token_right_padding_takes_last_real_token():
    assert torch.equal(last_token(HIDDEN, RIGHT_PADDED), torch.tensor([[3.0, 6.0], [4.0, -5.0]]))


def test_last_token_left_padding_takes_last_position():
    left_padded = torch.tensor([[0, 1, 1], [1, 1, 1]])
    assert torch.equal(last_token(HIDDEN, left_padded), torch.tensor([[100.0, -100.0], [4.0, -5.0]]))


@pytest.mark.parametrize("mode", sorted(set(POOLINGS) - {"cls"}))
def test_pooling_of_padded_batch_equals_unpadded_single(mode):
    """The same 2-token text, alone or right/left padded to 4, pools to the same vector."""
    text = torch.randn(1, 2, 3)
    alone = POOLINGS[mode](text, torch.ones(1, 2, dtype=torch.long))
    junk = torch.randn(1, 2, 3) * 50
    right = POOLINGS[mode](torch.cat([text, junk], 1), torch.tensor([[1, 1, 0, 0]]))
    left = POOLINGS[mode](torch.cat([junk, text], 1), torch.tensor([[0, 0, 1, 1]]))
    assert torch.allclose(alone, right) and torch.allclose(alone, left)
