"""Branch drafting against plain drafting: each branch (n, t), drafted all at once over the
shared KV with the branch mask, must equal drafting from trunk + s_1..s_n + t on its own."""

import pytest
import torch

from saguaro.engine.runner import ModelRunner
from saguaro.loading.loader import load_model
from saguaro.sampling.params import SamplingParams
from saguaro.ssd.branches import BranchDrafter, DraftSequence
from saguaro.testing.random_model import write_random_model


@pytest.fixture(scope="module")
def runner(tmp_path_factory):
    folder = write_random_model(tmp_path_factory.mktemp("branches") / "d", seed=5, scale=2.0, vocab=16)
    return ModelRunner(load_model(str(folder), dtype="float32").decoder)


def seq(key, trunk, temperature=0.0, seed=0):
    params = SamplingParams(temperature=temperature, seed=seed, max_tokens=64)
    return DraftSequence(key, list(trunk), params, params.make_generator())


def jit_alone(runner, trunk, k, temperature=0.0):
    d = BranchDrafter(runner, runner.vocab_size)
    d.start([seq(0, trunk, temperature)], 128)
    return d.jit([0], k, [1] * (k + 1))[0]


@pytest.mark.parametrize("k, fan", [(2, 1), (3, 2), (4, 3)])
def test_greedy_branches_equal_separate_drafting(runner, k, fan):
    trunks = [[1, 2, 3, 4, 5], [7, 7, 2]]
    d = BranchDrafter(runner, runner.vocab_size)
    seqs = [seq(i, t) for i, t in enumerate(trunks)]
    d.start(seqs, 512)
    for s in seqs:
        s.speculation = d.jit([seqs.index(s)], k, [fan] * (k + 1))[seqs.index(s)].tokens
    d.draft_branches(k, [fan] * (k + 1))
    for s in seqs:
        assert len(s.guesses) == fan * (k + 1)
        for n, t in s.guesses:
            assert t != (s.speculation[n] if n < k else None)  # never guesses the rejected token
            entry = d.spec_cache.lookup(s.key, n, t)
            expected = jit_alone(runner, s.trunk + s.speculation[:n] + [t], k)
            assert entry.tokens == expected.tokens, (n, t)


def test_sampled_branch_q_equals_separate_q(runner):
    k = 2
    d = BranchDrafter(runner, runner.vocab_size)
    s = seq(0, [3, 1, 4, 1, 5], temperature=1.0, seed=9)
    d.start([s], 512)
    s.speculation = d.jit([0], k, [1] * (k + 1))[0].tokens
    d.draft_branches(k, [2] * (k + 1))
    for n, t in s.guesses:
        entry = d.spec_cache.lookup(0, n, t)
        assert entry.q.shape == (k, runner.vocab_size)
        # q_0 of the branch is the draft distribution after trunk + s_1..s_n + t.
        cache = runner.new_cache(1, 64)
        logits = runner.feed(cache, [s.trunk + s.speculation[:n] + [t]])
        assert torch.allclose(entry.q[0], torch.softmax(logits[0], -1), atol=1e-5)


def test_take_advances_trunk_and_reports_hits(runner):
    k = 2
    d = BranchDrafter(runner, runner.vocab_size)
    s = seq(0, [2, 4, 6])
    d.start([s], 512)
    s.speculation = d.jit([0], k, [1] * (k + 1))[0].tokens
    d.draft_branches(k, [1] * (k + 1))
    n, t = s.guesses[-1]  # the bonus guess
    spec = list(s.speculation)
    hit = d.take(0, n, t)
    assert hit is not None and s.trunk == [2, 4, 6] + spec[:n] + [t]
    assert d.cache.lengths[0] == len(s.trunk) - 1
    s.speculation = hit.tokens
    d.draft_branches(k, [1] * (k + 1))
    assert d.take(0, 0, s.speculation[0]) is None  # the rejected token itself is never a guess


def test_greedy_guesses_are_the_drafts_runners_up(runner):
    """Greedy q is one-hot; the recovery guesses for n < K must still be the draft's next-best
    tokens (ranked by its softmax), not arbitrary zero-probability ones."""
    k, fan = 3, 2
    d = BranchDrafter(runner, runner.vocab_size)
    s = seq(0, [1, 5, 2, 9])
    d.start([s], 512)
    s.speculation = d.jit([0], k, [1] * (k + 1))[0].tokens
    d.draft_branches(k, [fan] * (k + 1))
    for n in range(k + 1):
        logits = runner.feed(runner.new_cache(1, 64), [s.trunk + s.speculation[:n]])[0]
        order = [t for t in logits.argsort(descending=True).tolist() if n == k or t != s.speculation[n]]
        assert [t for m, t in s.guesses if m == n] == order[:fan], n


def test_rows_without_guesses_draft_nothing_and_keep_their_neighbours(runner):
    """A fan-out of 0 at F_K gives a row without speculation no guess at all (the budget can
    plan that): it is padded as scratch while its neighbour's branches are drafted as usual,
    and a batch where no row has a guess drafts nothing."""
    k = 2
    trunks = [[1, 2, 3, 4, 5], [7, 7, 2]]
    d = BranchDrafter(runner, runner.vocab_size)
    seqs = [seq(i, t) for i, t in enumerate(trunks)]
    d.start(seqs, 512)
    seqs[0].speculation = d.jit([0], k, [1] * (k + 1))[0].tokens
    seqs[1].speculation = []
    d.draft_branches(k, [1, 1, 0])
    assert seqs[1].guesses == [] and len(seqs[0].guesses) == 2
    for n, t in seqs[0].guesses:
        expected = jit_alone(runner, seqs[0].trunk + seqs[0].speculation[:n] + [t], k)
        assert d.spec_cache.lookup(0, n, t).tokens == expected.tokens
    seqs[0].speculation = []
    assert d.draft_branches(k, [1, 1, 0])["branch_s"] == 0.0
    assert [s.guesses for s in seqs] == [[], []]
