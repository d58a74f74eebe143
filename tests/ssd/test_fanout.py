"""Fan-out allocation and the online acceptance / miss-rate estimates."""

import random

import pytest
import torch

from saguaro.ssd.fanout import AcceptanceTracker, cap_fanout, flat_fanout, geometric_fanout, validate_fanout
from saguaro.ssd.outcomes import predict_outcomes_batch


def test_flat():
    assert flat_fanout(3, 2) == [2, 2, 2, 2]
    assert flat_fanout(0, 5) == [5]


def test_geometric_largest_remainder_hand_checked():
    # a = 0.25, r = 1: weights [1, 0.5, 0.25 / sqrt(0.75) = 0.2887]; budget 10 gives ideals
    # [5.59, 2.80, 1.61] -> floors [5, 2, 1], the two leftover units go to .80 and .61.
    assert geometric_fanout(2, 10, 0.25, 1.0) == [5, 3, 2]


@pytest.mark.parametrize("k", [0, 1, 3, 6])
@pytest.mark.parametrize("budget", [0, 1, 7, 32, 257])
@pytest.mark.parametrize("a", [0.0, 0.3, 0.7, 0.95, 1.0])
@pytest.mark.parametrize("r", [0.0, 0.5, 1.0, 3.0])
def test_geometric_shape_sum_monotone(k, budget, a, r):
    f = geometric_fanout(k, budget, a, r)
    assert len(f) == k + 1 and sum(f) == budget and min(f) >= 0
    assert all(x >= y for x, y in zip(f[:k], f[1:k]))  # non-increasing over n < K


def test_geometric_bonus_gets_more_when_acceptance_is_high():
    f = geometric_fanout(4, 64, 0.9)
    assert f[4] > f[3] and f[4] == max(f)
    low = geometric_fanout(4, 64, 0.2)
    assert low[0] == max(low)


def test_geometric_clamps_acceptance():
    assert geometric_fanout(3, 20, 1.0) == geometric_fanout(3, 20, 0.99)
    assert geometric_fanout(3, 20, -1.0) == geometric_fanout(3, 20, 0.01)


def test_validate_fanout():
    validate_fanout([1, 2, 3], 2, 6)
    validate_fanout([0, 0], 1)
    for bad, k, budget in [([1, 2], 2, None), ([1, 2, 3], 2, 7), ([1, -1, 2], 2, None), ([1, 2.0, 3], 2, None)]:
        with pytest.raises(ValueError):
            validate_fanout(bad, k, budget)


def test_tracker_accept_rate_defaults_and_extremes():
    t = AcceptanceTracker(initial_accept_rate=0.6)
    assert t.accept_rate == 0.6
    t.update(0, 0)  # plain AR step: no information
    assert t.accept_rate == 0.6
    for _ in range(10):
        t.update(4, 4)
    assert t.accept_rate == 1.0
    for _ in range(200):
        t.update(0, 4)
    assert t.accept_rate < 0.01


def test_tracker_accept_rate_unbiased_under_truncation():
    rng = random.Random(0)
    t = AcceptanceTracker(decay=0.9995)
    for _ in range(20000):
        n = 0
        while n < 3 and rng.random() < 0.6:
            n += 1
        t.update(n, 3)
    assert abs(t.accept_rate - 0.6) < 0.02  # n / K would give about 0.39


def test_tracker_r_default_and_fit():
    t = AcceptanceTracker(min_samples=10)
    assert t.r == 1.0
    # miss(F) = 0.5 F^-2 for F = 1..4 exactly: P(rank >= F or miss) built from counts.
    total = 1600
    miss = [0.5 * f ** -2 for f in (1, 2, 3, 4)]
    ranks = [0] * round(total * (1 - miss[0]))
    for f in (1, 2, 3):
        ranks += [f] * round(total * (miss[f - 1] - miss[f]))
    ranks += [None] * (total - len(ranks))
    for rank in ranks:
        t.record_guess(rank, 4)
    rates = t.miss_rates()
    assert all(abs(rates[f] - miss[f - 1]) < 2e-3 for f in (1, 2, 3, 4))
    assert abs(t.r - 2.0) < 0.05
    assert sum(t.fanout(3, 16)) == 16


def test_tracker_miss_rates_only_use_outcomes_with_enough_guesses():
    t = AcceptanceTracker(min_samples=1)
    t.record_guess(None, 1)
    t.record_guess(1, 2)
    # F = 1: both outcomes count, both missed top-1. F = 2: only the second, which hit.
    assert t.miss_rates() == {1: 1.0, 2: 0.0}
    with pytest.raises(ValueError):
        t.record_guess(2, 2)


def test_a_fanout_never_asks_for_more_guesses_than_the_vocabulary_has():
    # An 8-token vocabulary: 7 recovery tokens at n < K (s_{n+1} is never one), 8 bonus tokens.
    assert cap_fanout([8, 3, 9], vocab=8) == [7, 3, 8]
    assert cap_fanout([2, 2, 2], vocab=151_936) == [2, 2, 2]
    q = torch.softmax(torch.randn(1, 3, 8), dim=-1)
    guesses = predict_outcomes_batch(q, torch.tensor([[1, 2]]), cap_fanout([8, 3, 9], 8))[0]
    assert len(guesses) == 18 and len(set(guesses)) == 18
