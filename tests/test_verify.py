"""Verification rule: exactness checked empirically against analytic outcome probabilities."""


import pytest
import torch
from scipy import stats

from saguaro.verify import one_hot_q, verify_greedy, verify_sampled

T = torch.tensor


def _gens(n, offset=0):
    return [torch.Generator().manual_seed(offset + i) for i in range(n)]


def _run_many(p, q, spec, draws, spec_len=None):
    """Verify one hand-made case `draws` times (one row per draw); Counter of (n, t)."""
    p_b = p.expand(draws, *p.shape)
    q_b = q.expand(draws, *q.shape)
    s_b = spec.expand(draws, *spec.shape)
    sl = None if spec_len is None else torch.full((draws,), spec_len, dtype=torch.long)
    v = verify_sampled(p_b, q_b, s_b, _gens(draws), sl)
    counts = {}
    for n, t in zip(v.accepted.tolist(), v.token.tolist()):
        counts[(n, t)] = counts.get((n, t), 0) + 1
    return counts


def _analytic(p, q, spec, spec_len=None):
    """P(n, t) from the rule in ALGORITHM.md, written out directly in Python floats."""
    k = spec_len if spec_len is not None else len(spec)
    p, q, spec = p.double().tolist(), q.double().tolist(), spec.tolist()
    out, reach = {}, 1.0
    for i in range(k):
        s = spec[i]
        acc = min(1.0, p[i][s] / q[i][s])
        res = [max(0.0, a - b) for a, b in zip(p[i], q[i])]
        for t, r in enumerate(res):
            out[(i, t)] = reach * (1 - acc) * r / sum(res)
        reach *= acc
    for t, pr in enumerate(p[k]):
        out[(k, t)] = reach * pr
    return out


def _assert_matches(counts, expected, draws):
    cells = [c for c, pr in expected.items() if pr > 0]
    impossible = sum(v for c, v in counts.items() if expected.get(c, 0) == 0)
    assert impossible == 0, f"outcomes with zero probability were drawn: {counts}"
    observed = [counts.get(c, 0) for c in cells]
    expect = [expected[c] * draws for c in cells]
    assert stats.chisquare(observed, expect).pvalue > 0.001, (counts, expected)


P3 = T([[0.5, 0.3, 0.2, 0.0],    # p_0
        [0.1, 0.6, 0.2, 0.1],    # p_1 (after s_1)
        [0.25, 0.25, 0.25, 0.25]])  # p_2 (after s_2)
Q2 = T([[0.2, 0.7, 0.1, 0.0],    # q_0: s_1 = 1 is over-proposed, accept prob 0.3 / 0.7
        [0.1, 0.3, 0.1, 0.5]])   # q_1: s_2 = 1 has p/q = 2, always accepted
SPEC = T([1, 1])


def test_analytic_helper_sums_to_one():
    assert abs(sum(_analytic(P3, Q2, SPEC).values()) - 1) < 1e-6


def test_sampled_matches_analytic_outcomes_with_residual_and_bonus():
    draws = 20000
    expected = _analytic(P3, Q2, SPEC)
    # Residual at n = 0 is max(0, p_0 - q_0) = [0.3, 0, 0.1, 0] -> recovery 0 or 2 only.
    assert expected[(0, 1)] == 0 and expected[(0, 3)] == 0
    assert abs(expected[(0, 0)] - (1 - 3 / 7) * 0.75) < 1e-6
    _assert_matches(_run_many(P3, Q2, SPEC, draws), expected, draws)


def test_sampled_rejection_at_second_position():
    spec = T([0, 3])  # s_1 = 0 accepted with prob 1 (0.5 >= 0.2); s_2 = 3: accept 0.1 / 0.5
    draws = 20000
    expected = _analytic(P3, Q2, spec)
    assert abs(expected[(2, 0)] - 0.2 * 0.25) < 1e-6
    _assert_matches(_run_many(P3, Q2, spec, draws), expected, draws)


def test_one_hot_q_accepts_with_p_and_recovers_without_s():
    p = T([[0.5, 0.3, 0.2], [0.2, 0.2, 0.6]])
    spec = T([1])
    q = one_hot_q(spec.unsqueeze(0), 3)[0]
    assert q.tolist() == [[0.0, 1.0, 0.0]]
    draws = 20000
    # Accept s = 1 with p_0(1) = 0.3; recovery from p_0 without token 1: [5/7, 0, 2/7].
    expected = {(0, 0): 0.7 * 5 / 7, (0, 2): 0.7 * 2 / 7,
                (1, 0): 0.3 * 0.2, (1, 1): 0.3 * 0.2, (1, 2): 0.3 * 0.6}
    assert all(abs(expected[c] - v) < 1e-6 for c, v in _analytic(p, q, spec).items() if v > 0)
    _assert_matches(_run_many(p, q, spec, draws), expected, draws)


def test_one_hot_q_padding_rows_are_zero():
    q = one_hot_q(T([[2, -1]]), 3)
    assert q.tolist() == [[[0, 0, 1], [0, 0, 0]]]


@pytest.mark.parametrize("spec_len", [0, 1])
def test_sampled_spec_len(spec_len):
    draws = 20000
    counts = _run_many(P3, Q2, SPEC, draws, spec_len=spec_len)
    assert max(n for n, _ in counts) <= spec_len
    _assert_matches(counts, _analytic(P3, Q2, SPEC, spec_len), draws)


def test_sampled_mixed_spec_len_in_one_batch():
    p = P3.expand(3, 3, 4)
    q = Q2.expand(3, 2, 4)
    spec = T([[1, 1], [0, 9], [0, 0]])  # row 1's position 2 is padding beyond the vocab
    v = verify_sampled(p, q, spec, _gens(3), T([2, 1, 0]))
    assert v.accepted[2] == 0
    assert v.accepted[1] <= 1 and v.accepted[0] <= 2


def test_exact_end_to_end_against_ar():
    """Draft samples s from q, target verifies; the first two committed tokens must be ~ p x p."""
    # Context-free target: the distribution depends only on the position in the output.
    target = T([[0.6, 0.3, 0.1], [0.2, 0.2, 0.6], [0.3, 0.4, 0.3], [0.1, 0.1, 0.8]])
    draft = T([0.2, 0.5, 0.3])
    draws, k = 12000, 2
    gens, draft_gens = _gens(draws), _gens(draws, offset=10**6)
    out = [[] for _ in range(draws)]
    while min(len(o) for o in out) < 2:
        pos = torch.tensor([min(len(o), 1) for o in out])  # [draws]; finished rows just repeat
        spec = torch.stack([torch.multinomial(draft.expand(k, 3), 1, generator=g).squeeze(-1)
                            for g in draft_gens])  # [draws, K]
        p = target[pos.unsqueeze(1) + torch.arange(k + 1)]  # [draws, K + 1, vocab]
        v = verify_sampled(p, draft.expand(draws, k, 3), spec, gens)
        for b in range(draws):
            if len(out[b]) < 2:
                out[b] += v.tokens_committed(b)
    counts = torch.zeros(9)
    for o in out:
        counts[o[0] * 3 + o[1]] += 1
    expected = (target[0].unsqueeze(1) * target[1].unsqueeze(0)).flatten() * draws
    assert stats.chisquare(counts.numpy(), expected.numpy()).pvalue > 0.001


def test_residual_all_zero_falls_back_to_p():
    # p_0 == q_0 and s = 2 has no mass in either: rejected, residual is zero, so t ~ p_0.
    p = T([[[0.5, 0.5, 0.0], [0.0, 0.0, 1.0]]])
    q = T([[[0.5, 0.5, 0.0]]])
    for seed in range(20):
        v = verify_sampled(p, q, T([[2]]), _gens(1, seed))
        assert v.accepted.item() == 0 and v.token.item() in (0, 1)


def test_sampled_reproducible_and_independent_of_companions():
    p, q = P3.expand(2, 3, 4), Q2.expand(2, 2, 4)
    spec = SPEC.expand(2, 2)
    a = verify_sampled(p, q, spec, _gens(2, 5))
    b = verify_sampled(p, q, spec, _gens(2, 5))
    assert torch.equal(a.accepted, b.accepted) and torch.equal(a.token, b.token)
    alone = verify_sampled(p[:1], q[:1], spec[:1], [torch.Generator().manual_seed(6)])
    assert (alone.accepted[0], alone.token[0]) == (a.accepted[1], a.token[1])


def _one_hot_p(argmaxes, vocab=5):
    return torch.nn.functional.one_hot(T(argmaxes), vocab).float()


@pytest.mark.parametrize("spec, n, t", [
    ([3, 1, 4], 3, 2),   # all accepted, bonus = argmax p_3
    ([3, 1, 0], 2, 4),   # s_3 mismatches argmax p_2 = 4 -> recovery 4
    ([0, 1, 4], 0, 3),   # first mismatch
    ([3, 0, 4], 1, 1),   # s_3 matching later does not count after a rejection
])
def test_greedy(spec, n, t):
    p = _one_hot_p([3, 1, 4, 2]).unsqueeze(0)  # [1, K + 1, vocab]
    v = verify_greedy(p, T([spec]))
    assert (v.accepted.item(), v.token.item()) == (n, t)
    assert v.tokens_committed(0) == spec[:n] + [t]


def test_greedy_spec_len_batch():
    p = _one_hot_p([3, 1, 4, 2]).expand(3, 4, 5)
    spec = T([[3, 1, 4], [3, 1, 4], [3, 1, 4]])
    v = verify_greedy(p, spec, T([3, 1, 0]))
    assert v.accepted.tolist() == [3, 1, 0]
    assert v.token.tolist() == [2, 1, 3]  # bonus from p_{spec_len}
    assert [v.tokens_committed(b) for b in range(3)] == [[3, 1, 4, 2], [3, 1], [3]]


def test_greedy_zero_lookahead_is_ar_step():
    p = _one_hot_p([2]).unsqueeze(0)
    v = verify_greedy(p, torch.zeros(1, 0, dtype=torch.long))
    assert v.tokens_committed(0) == [2]
    vs = verify_sampled(p, torch.zeros(1, 0, 5), torch.zeros(1, 0, dtype=torch.long), _gens(1))
    assert vs.tokens_committed(0) == [2]


def test_shape_errors():
    with pytest.raises(ValueError):
        verify_greedy(torch.zeros(1, 3, 4), T([[1, 2, 3]]))
    with pytest.raises(ValueError):
        verify_greedy(torch.zeros(1, 4, 4), T([[1, 2, 3]]), T([4]))
    with pytest.raises(ValueError):
        verify_sampled(torch.zeros(1, 3, 4), torch.zeros(1, 2, 4), T([[1, 2]]), _gens(2))
