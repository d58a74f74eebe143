"""Batched sampling with settings per row: each row as if sampled alone with its own settings."""

import numpy as np
import pytest
import torch
from scipy.stats import chisquare

from saguaro.sampling.params import SamplingParams
from saguaro.sampling.probs import logits_to_probs
from saguaro.sampling.rows import GREEDY_UNIFORM, RowSampling

MIXED = [
    SamplingParams(temperature=0),
    SamplingParams(temperature=0.7, top_k=3),
    SamplingParams(temperature=1.0, top_p=0.8),
    SamplingParams(temperature=1.3),
    SamplingParams(temperature=0.9, top_k=5, top_p=0.7),
]


def _rows(params, seed=0):
    return RowSampling(params, [torch.Generator().manual_seed(seed + i) for i in range(len(params))], "cpu")


@pytest.mark.parametrize("shape", [(5, 11), (5, 3, 11)])
def test_probs_match_each_row_alone(shape):
    logits = torch.randn(shape, generator=torch.Generator().manual_seed(1))
    got = _rows(MIXED).probs(logits)
    for b, p in enumerate(MIXED):
        want = logits_to_probs(logits[b], p.temperature, p.top_k, p.top_p)
        torch.testing.assert_close(got[b], want, rtol=1e-6, atol=1e-7)


def test_all_greedy_is_one_hot_argmax():
    logits = torch.tensor([[0.0, 2.0, 2.0], [1.0, 0.0, -1.0]])
    rows = _rows([SamplingParams(temperature=0)] * 2)
    assert rows.probs(logits).tolist() == [[0, 1, 0], [1, 0, 0]]
    assert rows.choose(logits).tolist() == [1, 0]


def test_uniforms_come_from_each_rows_own_generator():
    rows = _rows(MIXED, seed=10)
    u = rows.uniforms([1, 2, 3, 0, 2], width=4)
    assert u.shape == (5, 4) and u.dtype == torch.float64
    assert (u[0] == GREEDY_UNIFORM).all()  # greedy rows draw nothing
    for b, n in [(1, 2), (2, 3), (4, 2)]:
        want = torch.rand(n, generator=torch.Generator().manual_seed(10 + b), dtype=torch.float64)
        assert u[b, :n].tolist() == want.tolist()
    assert (u[3] == GREEDY_UNIFORM).all()  # a count of 0 is padding only
    assert rows.generators[0].initial_seed() == 10 and torch.rand(1, generator=rows.generators[0]).item() == \
        torch.rand(1, generator=torch.Generator().manual_seed(10)).item()  # untouched


def test_choose_is_independent_of_companions():
    logits = torch.randn(5, 11, generator=torch.Generator().manual_seed(2))
    together = [_rows(MIXED, seed=20).choose(logits).tolist() for _ in range(2)]
    assert together[0] == together[1]
    for b, p in enumerate(MIXED):
        alone = RowSampling([p], [torch.Generator().manual_seed(20 + b)], "cpu").choose(logits[b : b + 1])
        assert alone.item() == together[0][b]


def test_choose_distribution_per_row_chi_square():
    """20k draws per setting, as one batch of 1000 rows per setting sampled 20 times: every row
    follows its own filtered distribution."""
    vocab, copies, passes = 8, 1000, 20
    logits = torch.randn(len(MIXED), vocab, generator=torch.Generator().manual_seed(3))
    rows = _rows(MIXED * copies, seed=30)
    batch = logits.repeat(copies, 1)  # row i has MIXED[i % 5]'s logits and settings
    want = rows.probs(batch)[: len(MIXED)].double().numpy()
    counts = np.zeros((len(MIXED), vocab))
    for _ in range(passes):
        picks = rows.choose(batch).view(copies, len(MIXED)).numpy()
        for b in range(len(MIXED)):
            counts[b] += np.bincount(picks[:, b], minlength=vocab)
    for b in range(len(MIXED)):
        support = want[b] > 0
        assert counts[b][~support].sum() == 0  # never a filtered-out token
        if support.sum() > 1:
            expected = want[b][support] / want[b][support].sum() * copies * passes
            assert chisquare(counts[b][support], expected).pvalue > 1e-3
        else:
            assert counts[b][support].sum() == copies * passes
