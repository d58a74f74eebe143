"""Captured forwards (saguaro.engine.graphs), checked on CPU with the eager stand-in backend:
replays read the inputs of each call and write where a plain forward writes, shapes are
captured once, and whole engines give the same greedy tokens with graphs as without."""

import pytest
import torch

from saguaro import Engine
from saguaro.engine.graphs import EagerCapture, GraphSet, ShapeKey, capture_order, graphs_for
from saguaro.engine.runner import ModelRunner
from saguaro.errors import UnsupportedEnvironmentError
from saguaro.loading.loader import load_model
from engine.test_engine import GREEDY, PROMPTS, run


def test_capture_order_is_largest_first_without_repeats():
    keys = [ShapeKey(1, 1, "last"), ShapeKey(8, 1, "last"), ShapeKey(2, 5, "all"), ShapeKey(8, 1, "last"),
            ShapeKey(4, 4, "all")]
    assert capture_order(keys) == [ShapeKey(4, 4, "all"), ShapeKey(2, 5, "all"), ShapeKey(8, 1, "last"),
                                   ShapeKey(1, 1, "last")]


def test_graphs_for_reads_the_environment(monkeypatch):
    cpu = torch.device("cpu")
    assert graphs_for(cpu, True) is None  # auto: CUDA graphs on CUDA only
    monkeypatch.setenv("SAGUARO_CUDA_GRAPHS", "eager")
    assert isinstance(graphs_for(cpu, True).backend, EagerCapture)
    assert graphs_for(cpu, False) is None  # graphs need static shapes
    monkeypatch.setenv("SAGUARO_CUDA_GRAPHS", "off")
    assert graphs_for(cpu, True) is None
    monkeypatch.setenv("SAGUARO_CUDA_GRAPHS", "sometimes")
    with pytest.raises(UnsupportedEnvironmentError, match="SAGUARO_CUDA_GRAPHS"):
        graphs_for(cpu, True)


@pytest.fixture(scope="module")
def decoder():
    return load_model("random:tiny", dtype="float32").decoder


def _decode(runner: ModelRunner, steps: int, seed: int = 3) -> tuple[list[torch.Tensor], object]:
    """Three rows of a pool of four: prompts of uneven length, then `steps` one-token feeds and
    a three-token verify-like feed, each with fresh random tokens."""
    pool = runner.new_cache(0, 48, 4)
    g = torch.Generator().manual_seed(seed)
    vocab = runner.vocab_size
    rows = pool.add_rows(3)
    runner.feed(rows, [torch.randint(0, vocab, (n,), generator=g).tolist() for n in (5, 2, 7)])
    outs = [runner.feed(rows, torch.randint(0, vocab, (3, 1), generator=g).tolist()) for _ in range(steps)]
    outs.append(runner.feed(rows, torch.randint(0, vocab, (3, 3), generator=g).tolist(), all_logits=True))
    return outs, pool


def test_replays_read_each_call_and_write_the_pool(decoder):
    plain = ModelRunner(decoder, static_shapes=True, graphs=None)
    graphed = ModelRunner(decoder, static_shapes=True, graphs=GraphSet(EagerCapture()))
    want, want_pool = _decode(plain, 5)
    got, got_pool = _decode(graphed, 5)
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    assert got_pool.lengths == want_pool.lengths
    for a, b in zip(got_pool.k + got_pool.v, want_pool.k + want_pool.v):
        for row, n in enumerate(want_pool.lengths):
            assert torch.equal(a[row, :, :n], b[row, :, :n])
    # The prompts (up to 7 tokens) pad to width 8, the decode steps share one shape, and the
    # 3-token feed pads to 4, all over 4 rows: three captures for seven forwards.
    assert graphed.graphs.captures == 3
    assert all(key.rows == 4 for key in graphed.graphs.graphs(got_pool))


def test_graphs_follow_the_last_pools(decoder):
    runner = ModelRunner(decoder, static_shapes=True, graphs=GraphSet(EagerCapture()))
    pools = [_decode(runner, 1, seed)[1] for seed in range(3)]
    assert len(runner.graphs.pools) == GraphSet.POOLS
    assert [entry[0] for entry in runner.graphs.pools.values()] == pools[1:]


def test_capture_ahead_leaves_the_pool_empty(decoder):
    runner = ModelRunner(decoder, static_shapes=True, graphs=GraphSet(EagerCapture()))
    runner.register_width(4)
    pool = runner.new_cache(0, 32, 5)
    assert runner.capture(pool) == 6  # batches 1, 2 and 4; width 1 and the registered 4
    assert pool.batch == 0
    keys = set(runner.graphs.graphs(pool))
    assert keys == {ShapeKey(r, w, k) for r in (1, 2, 4) for w, k in ((1, "last"), (4, "all"))}
    before = runner.graphs.captures
    rows = pool.add_rows(3)
    runner.feed(rows, [[1]] * 3)  # a decode step of three rows, padded to four: captured already
    assert runner.graphs.captures == before


MODES = [("ar", {}), ("sd", dict(k=3)), ("ssd", dict(k=2, fanout=2, backup="neural", ssd_worker="thread"))]


@pytest.mark.parametrize("mode, options", MODES, ids=["ar", "sd", "ssd-thread"])
def test_engine_with_graphs_keeps_greedy_output(engines, folders, monkeypatch, mode, options):
    """Joins, an abort and padded batches, every forward of up to 16 tokens replayed."""
    schedule = {
        0: [("a", PROMPTS[0], GREEDY), ("gone", PROMPTS[1], GREEDY)],
        2: [("b", PROMPTS[1], GREEDY), ("c", PROMPTS[2], GREEDY)],
        4: [("d", PROMPTS[3], GREEDY)],
    }
    want = run(engines(mode, max_batch=4, **options), schedule, aborts={3: ["gone"]})
    monkeypatch.setenv("SAGUARO_CUDA_GRAPHS", "eager")
    draft = folders[1] if mode != "ar" else None
    engine = Engine(folders[0], draft, mode, dtype="float32", max_batch=4, static_shapes=True, **options)
    try:
        assert engine.target.graphs.captures > 0  # captured ahead, when the pool was allocated
        got = run(engine, schedule, aborts={3: ["gone"]})
        captured = engine.target.graphs.captures
        run(engine, schedule, aborts={3: ["gone"]})
        assert engine.target.graphs.captures == captured  # the second pass only replays
    finally:
        engine.close()
    assert {r: got[r] for r in "abcd"} == {r: want[r] for r in "abcd"}
    if mode == "sd":
        assert engine.strategy.drafter.runner.graphs.captures > 0
