"""SD and SSD stay exactly distributed as AR sampling when requests join and leave a running
batch: 20k seeded requests arrive a few per round into a step-wise Engine, so most of them join
mid-flight, beside neighbours that finish or start at other rounds."""

import dataclasses
from collections import Counter

import pytest

from exactness import chi_square_pvalue, exact_distribution, write_tiny_pair
from saguaro import Engine, SamplingParams

N_TOKENS = 3
SAMPLES = 20_000
ALPHA = 1e-3
PROMPT = [3, 5, 7, 3, 5, 7, 3]
JOINS = [0, 3, 1, 7, 0, 2, 5, 1]  # requests added before successive rounds, cycled


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    return write_tiny_pair(tmp_path_factory.mktemp("staggered"))


def staggered_counts(engine: Engine, params: SamplingParams, samples: int) -> tuple[Counter, int]:
    """Counts of the continuations of `samples` requests (seeds 0..samples-1) that arrive in
    staggered groups; also how many of them joined while others were running."""
    counts, tokens = Counter(), {}
    submitted = joined_busy = 0
    step = 0
    while submitted < samples or engine.has_unfinished():
        for _ in range(JOINS[step % len(JOINS)]):
            if submitted == samples:
                break
            p = dataclasses.replace(params, seed=submitted, max_tokens=N_TOKENS, ignore_eos=True)
            joined_busy += bool(engine.running)
            tokens[engine.add_request(PROMPT, p, request_id=str(submitted))] = []
            submitted += 1
        for out in engine.step():
            tokens[out.request_id] += out.new_token_ids
            if out.finished:
                assert "worker_fault" not in out.metrics.extra
                counts[tuple(tokens.pop(out.request_id))] += 1
        step += 1
    assert not tokens and sum(counts.values()) == samples
    return counts, joined_busy


@pytest.mark.parametrize(
    "mode, params, options",
    [
        ("sd", SamplingParams(temperature=1.0), dict(k=3)),
        ("ssd", SamplingParams(temperature=0.7, top_k=5, top_p=0.9), dict(k=2, fanout=1, backup="neural")),
    ],
    ids=["sd-t1", "ssd-t0.7-neural"],  # joins into a thread worker: tests/engine/test_engine.py
)
def test_staggered_joins_are_exact(folders, one_torch_thread, mode, params, options):
    exact = exact_distribution(folders[0], PROMPT, N_TOKENS, params.temperature, params.top_k, params.top_p)
    with Engine(folders[0], folders[1], mode, dtype="float32", max_batch=16, **options) as engine:
        counts, joined_busy = staggered_counts(engine, params, SAMPLES)
    assert joined_busy > SAMPLES // 2  # most requests joined a running batch
    pvalue = chi_square_pvalue(counts, exact)
    print(f"chi-square p = {pvalue:.4g}")
    assert pvalue > ALPHA
