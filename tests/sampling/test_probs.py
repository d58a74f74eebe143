"""logits_to_probs, sample and apply_saguaro on tiny hand-made inputs."""

import math

import pytest
import torch
from scipy import stats

from saguaro.errors import InvalidRequestError
from saguaro.sampling.params import SamplingParams
from saguaro.sampling.probs import apply_saguaro, logits_to_probs, probs_for_params, sample


def _close(a, b):
    torch.testing.assert_close(a, torch.tensor(b, dtype=torch.float32), atol=1e-6, rtol=1e-5)


def test_greedy_is_one_hot_float32_from_any_dtype():
    logits = torch.tensor([[0.0, 3.0, 1.0], [5.0, 5.0, 1.0]], dtype=torch.bfloat16)
    probs = logits_to_probs(logits, temperature=0)
    assert probs.dtype == torch.float32
    _close(probs, [[0, 1, 0], [1, 0, 0]])  # ties: first index


def test_temperature_scales_logits():
    logits = torch.tensor([0.0, 1.0, 2.0])
    probs = logits_to_probs(logits, temperature=2.0)
    e = [math.exp(x / 2) for x in (0.0, 1.0, 2.0)]
    _close(probs, [x / sum(e) for x in e])


def test_top_k_keeps_k_largest():
    logits = torch.tensor([0.0, 1.0, 2.0, 3.0])
    probs = logits_to_probs(logits, 1.0, top_k=2)
    z = math.exp(2) + math.exp(3)
    _close(probs, [0, 0, math.exp(2) / z, math.exp(3) / z])
    for disabled in (0, -1, 4, 10):
        _close(logits_to_probs(logits, 1.0, top_k=disabled), torch.softmax(logits, -1).tolist())


def test_top_k_ties_keep_exactly_k():
    probs = logits_to_probs(torch.tensor([1.0, 1.0, 1.0, 0.0]), 1.0, top_k=2)
    assert int((probs > 0).sum()) == 2
    assert math.isclose(float(probs.sum()), 1.0, rel_tol=1e-6)


@pytest.mark.parametrize("top_p, expected", [
    (0.4, [1, 0, 0, 0]),                   # first token alone reaches 0.4
    (0.75, [0.625, 0.375, 0, 0]),          # 0.5 < 0.75 <= 0.8
    (0.81, [0.5 / 0.95, 0.3 / 0.95, 0.15 / 0.95, 0]),
    (1e-9, [1, 0, 0, 0]),                  # always at least one token
    (1.0, [0.5, 0.3, 0.15, 0.05]),
])
def test_top_p_smallest_prefix(top_p, expected):
    logits = torch.tensor([0.5, 0.3, 0.15, 0.05]).log()
    _close(logits_to_probs(logits, 1.0, top_p=top_p), expected)


def test_top_p_order_independent_of_vocab_position():
    logits = torch.tensor([0.05, 0.3, 0.5, 0.15]).log()
    _close(logits_to_probs(logits, 1.0, top_p=0.75), [0, 0.375, 0.625, 0])


def test_top_k_then_top_p():
    logits = torch.tensor([0.4, 0.3, 0.2, 0.1]).log()
    # top-k 3 renormalises to [4/9, 3/9, 2/9]; top-p 0.5 then needs the first two.
    _close(logits_to_probs(logits, 1.0, top_k=3, top_p=0.5), [4 / 7, 3 / 7, 0, 0])


def test_any_leading_shape():
    logits = torch.randn(2, 3, 5, generator=torch.Generator().manual_seed(0))
    probs = logits_to_probs(logits, 0.7, top_k=3, top_p=0.9)
    assert probs.shape == (2, 3, 5)
    torch.testing.assert_close(probs.sum(-1), torch.ones(2, 3))
    assert ((probs > 0).sum(-1) <= 3).all()
    for i in range(2):
        for j in range(3):
            torch.testing.assert_close(probs[i, j], logits_to_probs(logits[i, j], 0.7, top_k=3, top_p=0.9))


def test_probs_for_params():
    logits = torch.tensor([0.0, 1.0, 2.0, 3.0])
    params = SamplingParams(temperature=0.5, top_k=3, top_p=0.9)
    torch.testing.assert_close(probs_for_params(logits, params), logits_to_probs(logits, 0.5, 3, 0.9))


def _gens(seeds):
    return [torch.Generator().manual_seed(s) for s in seeds]


def test_sample_reproducible_and_independent_of_companions():
    probs = torch.full((3, 6), 1 / 6)
    a = sample(probs, _gens([1, 2, 3]))
    b = sample(probs, _gens([1, 2, 3]))
    assert torch.equal(a, b) and a.dtype == torch.int64
    # Seed 2 alone or with other companions gives the same draws, round after round.
    g_alone, g_mixed = _gens([2]), _gens([9, 2])
    for _ in range(20):
        assert sample(probs[:1], g_alone)[0] == sample(probs[:2], g_mixed)[1]


def test_sample_greedy_rows_return_argmax():
    probs = logits_to_probs(torch.tensor([[0.0, 2.0, 1.0], [3.0, 0.0, 1.0]]), temperature=0)
    for seed in range(50):
        assert sample(probs, _gens([seed, seed + 1])).tolist() == [1, 0]


def test_sample_distribution_and_zero_mass():
    probs = torch.tensor([0.5, 0.0, 0.3, 0.2])
    n = 20000
    draws = sample(probs.expand(n, 4), _gens(range(n)))
    counts = torch.bincount(draws, minlength=4)
    assert counts[1] == 0
    keep = [0, 2, 3]
    assert stats.chisquare(counts[keep].numpy(), (probs[keep] * n).numpy()).pvalue > 0.001


def test_apply_saguaro_hand_checked():
    q = torch.tensor([0.1, 0.4, 0.2, 0.3])
    # Top 2 (fanout_top 1 + 1) are tokens 1 and 3; halve them: [0.1, 0.2, 0.2, 0.15] / 0.65.
    _close(apply_saguaro(q, 1, 0.5), [0.1 / 0.65, 0.2 / 0.65, 0.2 / 0.65, 0.15 / 0.65])
    assert apply_saguaro(q, 1, 1.0) is q
    batched = apply_saguaro(q.expand(2, 3, 4), 0, 0.25)
    assert batched.shape == (2, 3, 4) and batched.dtype == torch.float32
    _close(batched[1, 2], [0.1 / 0.7, 0.1 / 0.7, 0.2 / 0.7, 0.3 / 0.7])


@pytest.mark.parametrize("c", [0.0, -0.5, 1.5])
def test_apply_saguaro_rejects_bad_c(c):
    with pytest.raises(InvalidRequestError):
        apply_saguaro(torch.tensor([0.5, 0.5]), 1, c)
