"""SSD is exactly distributed as AR sampling from the target, through cache hits, misses with
each backup, Saguaro sampling (C < 1), at batch 1 and batch > 1; greedy SSD equals greedy AR;
a worker that dies mid-generation leaves the output exact (AR fallback)."""

import os
import signal

import pytest

from exactness import chi_square_pvalue, exact_distribution, sample_continuations, write_tiny_pair
from saguaro import LLM, SamplingParams

N_TOKENS = 3
SAMPLES = 20_000
SAMPLES_BATCH1 = 1_000  # one generate call each, with a worker round trip per round: see SD's note
ALPHA = 1e-3
PROMPT = [3, 5, 7, 3, 5, 7, 3]
T1 = SamplingParams(temperature=1.0)
T07 = SamplingParams(temperature=0.7, top_k=5, top_p=0.9)


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    return write_tiny_pair(tmp_path_factory.mktemp("ssd_exactness"))


@pytest.fixture(scope="module")
def make_ssd(folders):
    made = []

    def make(**options):
        llm = LLM(target=folders[0], draft=folders[1], mode="ssd", dtype="float32", **options)
        made.append(llm)
        return llm

    yield make
    for llm in made:
        llm.close()


def check_exact(llm, folders, params, samples, batch):
    exact = exact_distribution(folders[0], PROMPT, N_TOKENS, params.temperature, params.top_k, params.top_p)
    counts = sample_continuations(llm, PROMPT, N_TOKENS, params, samples, batch=batch)
    pvalue = chi_square_pvalue(counts, exact)
    print(f"chi-square p = {pvalue:.4g}")
    assert pvalue > ALPHA


def hit_rate(llm, params, n=40):
    res = llm.generate([PROMPT] * n, [SamplingParams(temperature=params.temperature, top_k=params.top_k,
                                                     top_p=params.top_p, seed=50_000 + i, max_tokens=12,
                                                     ignore_eos=True) for i in range(n)])
    hits = [r.metrics.extra["hit_rate"] for r in res]
    return sum(hits) / len(hits)


@pytest.mark.parametrize(
    "params, options",
    [
        (T1, dict(k=2, fanout=1, backup="neural")),
        (T07, dict(k=3, fanout=1, backup="ngram", saguaro_c=0.5)),
        (T1, dict(k=2, fanout="geometric", backup="none", saguaro_c=0.8)),
        (T07, dict(k=2, fanout=2, backup="neural", ssd_worker="thread")),
    ],
    ids=["t1-neural", "t0.7-ngram-c0.5", "t1-none-geometric-c0.8", "t0.7-neural-thread-worker"],
)
def test_ssd_batched_exact(make_ssd, folders, params, options):
    llm = make_ssd(**options)
    rate = hit_rate(llm, params)
    assert 0 < rate < 1, "the test must see both cache hits and misses"
    assert llm.strategy.fault is None
    check_exact(llm, folders, params, SAMPLES, batch=2_000)


def test_ssd_batch1_exact(make_ssd, folders):
    llm = make_ssd(k=2, fanout=2, backup="neural", saguaro_c=0.7)
    check_exact(llm, folders, T1, SAMPLES_BATCH1, batch=1)


@pytest.mark.parametrize("options", [dict(k=3, fanout=1, backup="neural"), dict(k=2, fanout=2, backup="ngram"),
                                     dict(fanout="geometric", backup="none"),
                                     dict(k=3, fanout=1, backup="neural", ssd_worker="thread")])
def test_ssd_greedy_equals_ar(make_ssd, folders, options):
    ar = LLM(target=folders[0], dtype="float32")
    ssd = make_ssd(**options)
    prompts = [PROMPT, [1, 2], [4, 4, 4, 4, 6]]
    params = SamplingParams(temperature=0, max_tokens=30, ignore_eos=True)
    want = [r.token_ids for r in ar.generate(prompts, params)]
    for _ in range(2):  # the second batch runs on a plan re-made from the first one's rounds
        res = ssd.generate(prompts, params)
        assert [r.token_ids for r in res] == want
        assert all("worker_fault" not in r.metrics.extra for r in res)  # no silent fallback to AR


def test_plan_changes_within_a_batch_keep_greedy_exact(folders, monkeypatch):
    """The worker may re-plan between a reply and the next round's drafting, so a speculation
    drafted under one K is verified and answered while the branches use the next. Forced here:
    K alternates between 3 and 1 every 2 rounds."""
    from saguaro.ssd import worker as worker_module
    from saguaro.ssd.fanout import flat_fanout

    switches = []

    def alternate(self, key, observed):
        k = 1 if self._plans[key][0] == 3 else 3
        self._plans[key] = (k, flat_fanout(k, 2), 2 * (k + 1))
        switches.append(k)
        return True

    monkeypatch.setattr(worker_module, "IN_BATCH_REPLAN_ROUNDS", 2)
    monkeypatch.setattr(worker_module.Worker, "_replan", alternate)
    ar = LLM(target=folders[0], dtype="float32")
    ssd = LLM(target=folders[0], draft=folders[1], mode="ssd", dtype="float32", k=2, fanout=1, ssd_worker="thread")
    try:
        prompts = [PROMPT, [1, 2], [4, 4, 4, 4, 6]]
        params = SamplingParams(temperature=0, max_tokens=30, ignore_eos=True)
        want = [r.token_ids for r in ar.generate(prompts, params)]
        res = ssd.generate(prompts, params)
        assert [r.token_ids for r in res] == want
        assert all("worker_fault" not in r.metrics.extra for r in res)
        assert switches.count(1) >= 2 and switches.count(3) >= 2
    finally:
        ssd.close()


def test_ssd_seed_reproducible(make_ssd):
    llm = make_ssd(k=2, fanout=1)
    params = SamplingParams(temperature=1.0, seed=123, max_tokens=20, ignore_eos=True)
    assert llm.generate([PROMPT], params)[0].token_ids == llm.generate([PROMPT], params)[0].token_ids


def test_worker_dying_mid_generation_falls_back_exactly(make_ssd, folders):
    ar = LLM(target=folders[0], dtype="float32")
    params = SamplingParams(temperature=0, max_tokens=40, ignore_eos=True)
    llm = make_ssd(k=2, fanout=1, fault_after_rounds=3)
    res = llm.generate([PROMPT, [1, 2]], params)
    assert [r.token_ids for r in res] == [r.token_ids for r in ar.generate([PROMPT, [1, 2]], params)]
    assert "worker_fault" in res[0].metrics.extra and res[0].metrics.extra["fallback"] == "ar"
    # Later requests on the same LLM keep working, exactly, without the worker.
    assert llm.generate([PROMPT], params)[0].token_ids == ar.generate([PROMPT], params)[0].token_ids


def test_thread_worker_stopping_mid_generation_falls_back_exactly(make_ssd, folders):
    ar = LLM(target=folders[0], dtype="float32")
    params = SamplingParams(temperature=0, max_tokens=40, ignore_eos=True)
    llm = make_ssd(k=2, fanout=1, fault_after_rounds=3, ssd_worker="thread")
    assert llm.strategy.client.thread is not None and llm.strategy.client.pid is None
    res = llm.generate([PROMPT, [1, 2]], params)
    assert [r.token_ids for r in res] == [r.token_ids for r in ar.generate([PROMPT, [1, 2]], params)]
    assert res[0].metrics.extra["worker_fault"] == "worker thread ended"


def test_worker_killed_between_requests(make_ssd, folders):
    ar = LLM(target=folders[0], dtype="float32")
    params = SamplingParams(temperature=0, max_tokens=20, ignore_eos=True)
    llm = make_ssd(k=2, fanout=1, worker_timeout=10)
    llm.generate([PROMPT], params)
    os.kill(llm.strategy.client.pid, signal.SIGKILL)
    res = llm.generate([PROMPT], params)[0]
    assert res.token_ids == ar.generate([PROMPT], params)[0].token_ids
    assert res.metrics.extra["fallback"] == "ar"


def test_close_stops_the_thread_worker(folders):
    llm = LLM(target=folders[0], draft=folders[1], mode="ssd", dtype="float32", k=2, ssd_worker="thread")
    thread = llm.strategy.client.thread
    assert thread.is_alive()
    llm.close()
    assert not thread.is_alive()


def test_close_leaves_no_process(folders):
    llm = LLM(target=folders[0], draft=folders[1], mode="ssd", dtype="float32", k=2)
    pid = llm.strategy.client.pid
    llm.close()
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)


def test_seeded_requests_replay_under_the_automatic_plan(make_ssd):
    llm = make_ssd(fanout="flat")  # K and B from the budget, re-planned between greedy batches
    seeded = SamplingParams(temperature=1.0, seed=321, max_tokens=24, ignore_eos=True)
    greedy = SamplingParams(temperature=0, max_tokens=24, ignore_eos=True)
    first = llm.generate([PROMPT], seeded)[0].token_ids
    for _ in range(2):
        llm.generate([PROMPT], greedy)
    assert llm.generate([PROMPT], seeded)[0].token_ids == first
