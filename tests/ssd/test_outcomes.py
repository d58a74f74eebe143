"""Outcome prediction on a hand-made draft distribution."""

import pytest
import torch

from saguaro.ssd.outcomes import outcome_key, predict_outcomes, predict_outcomes_batch

Q = torch.tensor([
    [0.40, 0.30, 0.20, 0.10, 0.00],  # q_0: s_1 = 0 is the top token, so it is skipped
    [0.05, 0.15, 0.50, 0.20, 0.10],  # q_1: s_2 = 3
    [0.10, 0.20, 0.30, 0.25, 0.15],  # q_2: bonus guesses, nothing excluded
])
SPEC = torch.tensor([0, 3])


def test_hand_checked():
    got = predict_outcomes(Q, SPEC, [2, 3, 2])
    assert got == [(0, 1), (0, 2), (1, 2), (1, 1), (1, 4), (2, 2), (2, 3)]


def test_never_guesses_the_speculated_token():
    for fanout in ([4, 4, 1], [1, 0, 5]):
        got = predict_outcomes(Q, SPEC, fanout)
        assert len(got) == sum(fanout)
        assert all(t != int(SPEC[n]) for n, t in got if n < 2)
    # Only four tokens remain for n < K once s_{n+1} is excluded.
    with pytest.raises(ValueError):
        predict_outcomes(Q, SPEC, [5, 0, 0])
    with pytest.raises(ValueError):
        predict_outcomes(Q, SPEC, [1, 1])


def test_zero_probability_tokens_still_rank_above_the_speculated_one():
    q = torch.tensor([[0.0, 1.0, 0.0], [0.5, 0.5, 0.0]])
    got = predict_outcomes(q, torch.tensor([1]), [2, 0])
    assert sorted(got) == [(0, 0), (0, 2)]


def test_batch_matches_single():
    q = torch.stack([Q, Q.flip(-1)])
    spec = torch.stack([SPEC, torch.tensor([4, 1])])
    batch = predict_outcomes_batch(q, spec, [1, 2, 1])
    assert batch == [predict_outcomes(q[b], spec[b], [1, 2, 1]) for b in range(2)]
    assert predict_outcomes_batch(q, spec, [0, 0, 0]) == [[], []]


def test_outcome_key():
    assert outcome_key(3, torch.tensor(1), 7) == (3, 1, 7)
