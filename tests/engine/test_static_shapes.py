"""Capture-ready forwards: bucketed batch and width, attention over the whole capacity.

Padding rows borrow the pool rows after the batch and must leave whatever those rows hold
intact; the results must match the exact-shape forward, and whole engines must produce the
same greedy tokens with static shapes as without, in every mode.
"""

import pytest
import torch

from saguaro.engine.runner import ModelRunner, append_inputs, bucket
from saguaro.loading.loader import load_model
from engine.test_engine import GREEDY, PROMPTS, run


@pytest.mark.parametrize("n, extra, want", [(1, (), 1), (2, (), 2), (3, (), 4), (5, (), 8), (5, (5,), 5),
                                            (4, (5,), 4), (6, (5,), 8), (9, (3, 12), 12)])
def test_bucket(n, extra, want):
    assert bucket(n, extra) == want


def test_append_inputs_made_from_lengths():
    slots, mask = append_inputs(torch.tensor([2, 0]), 2, 5)
    assert slots.tolist() == [[2, 3], [0, 1]]
    assert mask.int().tolist() == [[[1, 1, 1, 0, 0], [1, 1, 1, 1, 0]], [[1, 0, 0, 0, 0], [1, 1, 0, 0, 0]]]


@pytest.fixture(scope="module")
def decoder():
    return load_model("random:tiny", dtype="float32").decoder


def _pool(decoder, rows: int, max_rows: int, capacity: int, lengths: list[int]):
    pool = decoder.new_cache(rows, capacity, max_rows)
    g = torch.Generator().manual_seed(4)
    for t in pool.k + pool.v:
        t.copy_(torch.randn(t.shape, generator=g))
    pool.lengths[:] = lengths
    return pool


def test_padded_view_and_spare_lengths(decoder):
    pool = _pool(decoder, 3, 6, 16, [4, 7, 9])
    window = pool.window(0, 2)
    view, spare = window.padded(4, 2)
    assert view.batch == 4 and spare == [9, 0]  # row 2 is in use, row 3 is free
    assert view.k[0].data_ptr() == pool.k[0].data_ptr()  # a view of the pool, nothing copied
    assert window.padded(7, 1) is None  # more rows than the pool has
    pool.lengths[2] = 15
    assert window.padded(4, 2) is None  # row 2 has no room for the padding's slots


@pytest.mark.parametrize("width, all_logits", [(1, False), (3, True)])
def test_static_feed_matches_exact_and_spares_other_rows(decoder, width, all_logits):
    exact, static = ModelRunner(decoder), ModelRunner(decoder, static_shapes=True)
    lengths = [5, 11, 2, 8, 0]  # rows 0-2 run; 3 (say, prefilling) and 4 are the padding rows
    pools = [_pool(decoder, 5, 5, 24, lengths) for _ in range(2)]
    g = torch.Generator().manual_seed(5)
    rows = torch.randint(0, decoder.cfg.vocab_size, (3, width), generator=g).tolist()
    rows[1] = rows[1][:1]  # uneven rows: padded within the width
    out = [runner.feed(pool.window(0, 3), rows, all_logits) for runner, pool in zip((exact, static), pools)]
    torch.testing.assert_close(out[1], out[0], rtol=1e-5, atol=1e-5)
    assert pools[0].lengths == pools[1].lengths == [5 + width, 12, 2 + width, 8, 0]
    for a, b in zip(pools[0].k + pools[0].v, pools[1].k + pools[1].v):
        # Every slot a sequence owns is the same; padding wrote only past row 3's and row 4's ends.
        for row, n in enumerate(pools[0].lengths):
            torch.testing.assert_close(a[row, :, :n], b[row, :, :n], rtol=1e-6, atol=1e-6)


def test_static_forward_at_matches_exact(decoder):
    exact, static = ModelRunner(decoder), ModelRunner(decoder, static_shapes=True)
    pools = [_pool(decoder, 3, 4, 20, [6, 9, 3]) for _ in range(2)]
    g = torch.Generator().manual_seed(6)
    tokens = torch.randint(0, decoder.cfg.vocab_size, (3, 2), generator=g)
    slots = torch.tensor([[12, 13], [14, 15], [12, 13]])
    positions = torch.tensor([[6, 7], [9, 9], [3, 4]])
    mask = torch.rand(3, 2, 16, generator=g) < 0.6
    mask[:, :, 0] = True
    out = [runner.forward_at(pool, tokens, positions, slots, mask) for runner, pool in zip((exact, static), pools)]
    torch.testing.assert_close(out[1], out[0], rtol=1e-5, atol=1e-5)


MODES = [("ar", {}), ("sd", dict(k=3)), ("ssd", dict(k=2, fanout=2, backup="neural", ssd_worker="thread"))]


@pytest.mark.parametrize("mode, options", MODES, ids=["ar", "sd", "ssd-thread"])
def test_engine_static_shapes_keep_greedy_output(engines, mode, options):
    """Joins, an abort and uneven rows with padded batches (3 running rows pad to 4)."""
    dynamic = engines(mode, max_batch=4, **options)
    static = engines(mode, max_batch=4, static_shapes=True, **options)
    schedule = {
        0: [("a", PROMPTS[0], GREEDY), ("gone", PROMPTS[1], GREEDY)],
        2: [("b", PROMPTS[1], GREEDY), ("c", PROMPTS[2], GREEDY)],
        4: [("d", PROMPTS[3], GREEDY)],
    }
    want = run(dynamic, schedule, aborts={3: ["gone"]})
    got = run(static, schedule, aborts={3: ["gone"]})
    assert {r: got[r] for r in "abcd"} == {r: want[r] for r in "abcd"}
    assert all(len(got[r]) == GREEDY.max_tokens for r in "abcd")
