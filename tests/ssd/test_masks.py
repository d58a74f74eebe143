"""Branch masks, positions and slots for a small hand-drawn layout."""

import pytest
import torch

from saguaro.ssd.masks import branch_mask, branch_positions, branch_slots, causal_mask

# trunk_len 2, K 2, three branches with accepted counts 0, 2, 1.
# slots: 0-1 trunk | 2 s_1, 3 s_2 | depth 0: 4 5 6 | depth 1: 7 8 9 | 10 unused
TRUNK, K, ACC = 2, 2, [0, 2, 1]


def test_branch_mask_depth1_hand_written():
    expected = torch.tensor([
        # 0  1  2  3  4  5  6  7  8  9 10
        [1, 1, 0, 0, 1, 0, 0, 1, 0, 0, 0],  # n = 0: trunk, own t and depth-1 token
        [1, 1, 1, 1, 0, 1, 0, 0, 1, 0, 0],  # n = 2: trunk, s_1, s_2, own tokens
        [1, 1, 1, 0, 0, 0, 1, 0, 0, 1, 0],  # n = 1: trunk, s_1, own tokens
    ], dtype=torch.bool)
    assert torch.equal(branch_mask(TRUNK, K, ACC, depth=1, kv_len=11), expected)


def test_branch_mask_depth0_hand_written():
    expected = torch.tensor([
        [1, 1, 0, 0, 1, 0, 0],
        [1, 1, 1, 1, 0, 1, 0],
        [1, 1, 1, 0, 0, 0, 1],
    ], dtype=torch.bool)
    assert torch.equal(branch_mask(TRUNK, K, ACC, depth=0, kv_len=7), expected)


def test_positions_and_slots():
    assert branch_positions(TRUNK, ACC, 1).tolist() == [3, 5, 4]
    assert branch_positions(TRUNK, ACC, 0).tolist() == [2, 4, 3]
    assert branch_slots(TRUNK, K, 3, 0).tolist() == [4, 5, 6]
    assert branch_slots(TRUNK, K, 3, 1).tolist() == [7, 8, 9]


def test_each_branch_sees_exactly_its_logical_prefix():
    # A branch query at RoPE position P must see P + 1 tokens, its own slot included.
    acc = [0, 3, 1, 3, 2]
    for depth in range(3):
        mask = branch_mask(5, 3, acc, depth, kv_len=5 + 3 + 5 * 3)
        pos = branch_positions(5, acc, depth)
        assert torch.equal(mask.sum(-1), pos + 1)
        slots = branch_slots(5, 3, 5, depth)
        assert mask[torch.arange(5), slots].all()


def test_branch_mask_errors():
    with pytest.raises(ValueError):
        branch_mask(TRUNK, K, ACC, depth=1, kv_len=9)
    with pytest.raises(ValueError):
        branch_mask(TRUNK, K, [0, 3], depth=0, kv_len=20)


def test_causal_mask_hand_written():
    got = causal_mask(torch.tensor([1, 3]), new=2, kv_len=5)
    expected = torch.tensor([
        [[1, 1, 0, 0, 0], [1, 1, 1, 0, 0]],
        [[1, 1, 1, 1, 0], [1, 1, 1, 1, 1]],
    ], dtype=torch.bool)
    assert torch.equal(got, expected)
    with pytest.raises(ValueError):
        causal_mask(torch.tensor([4]), new=2, kv_len=5)
