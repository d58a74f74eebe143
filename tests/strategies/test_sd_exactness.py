"""SD is exactly distributed as AR sampling from the target: chi-square of sampled continuations
against the enumerated target distribution, plus seeds and greedy equality, on tiny random models.
"""

import pytest
import torch

from exactness import (
    write_tiny_pair,
    chi_square_pvalue,
    chi_square_pvalue_joint,
    exact_distribution,
    filtered_probs,
    hf_logits,
    sample_continuations,
    sample_continuations_multi,
)
from saguaro import LLM, SamplingParams
from saguaro.engine.runner import ModelRunner
from saguaro.loading.loader import load_model
from saguaro.sampling.probs import draw_uniforms, inverse_cdf, logits_to_probs
from saguaro.verify import Verification, verify_greedy

N_TOKENS = 3  # the first 3 generated tokens: 8**3 = 512 cells
SAMPLES = 20_000
BATCH = 2_000
# Batch 1 is one generate call per sample (about 4 ms each on 2 shared cores), so it draws fewer
# samples. The chi-square stays valid at any N (cells expected below 5 are pooled); only its
# power to detect a small deviation is lower; the batched tests carry the 20k-sample power, and
# test_batch1_output_equals_batched_output_per_seed ties the two paths together seed by seed.
SAMPLES_BATCH1 = 1_500
ALPHA = 1e-3

REPEATS = [3, 5, 7, 3, 5, 7, 3]  # the n-gram drafter always finds a match here
SHORT = [2, 6, 1]  # no repeat: the n-gram drafter proposes nothing at first (a plain AR step)
T1 = SamplingParams(temperature=1.0)
T07 = SamplingParams(temperature=0.7, top_k=5, top_p=0.9)  # both filters cut at REPEATS' first step


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Thousands of tiny per-row ops: on 2 shared cores a second intra-op thread made this module
    about 14x slower under load (threads spin waiting for each other), and never faster."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    return write_tiny_pair(tmp_path_factory.mktemp("sd_exactness"))


@pytest.fixture(scope="module")
def make_llm(folders):
    made = {}

    def make(mode, draft=None, k=None):
        key = (mode, draft, k)
        if key not in made:
            draft_ref = folders[1] if draft == "model" else draft
            made[key] = LLM(target=folders[0], draft=draft_ref, mode=mode, k=k, dtype="float32")
        return made[key]

    return make


@pytest.fixture(scope="module")
def exact(folders):
    cache = {}

    def get(prompt, params):
        key = (tuple(prompt), params.temperature, params.top_k, params.top_p)
        if key not in cache:
            cache[key] = exact_distribution(folders[0], prompt, N_TOKENS, params.temperature, params.top_k, params.top_p)
        return cache[key]

    return get


def assert_speculates(llm, prompt, params):
    """Both acceptance and rejection happen, so the test covers the recovery and bonus paths."""
    res = llm.generate([prompt] * 50, [SamplingParams(temperature=params.temperature, top_k=params.top_k,
                                                      top_p=params.top_p, seed=10_000 + i, max_tokens=8,
                                                      ignore_eos=True) for i in range(50)])
    drafted = sum(r.metrics.speculation.drafted for r in res)
    accepted = sum(r.metrics.speculation.accepted for r in res)
    assert 0 < accepted < drafted


def assert_exact(pvalue):
    print(f"chi-square p = {pvalue:.4g}")  # shown with `pytest -rP`
    assert pvalue > ALPHA


# ---- the harness itself ---------------------------------------------------------------------


def test_transformers_and_saguaro_logits_agree(folders):
    prompt = REPEATS + [1, 4]
    for folder in folders:
        runner = ModelRunner(load_model(folder, dtype="float32").decoder)
        cache = runner.new_cache(1, 32)
        ours = runner.feed(cache, [prompt], all_logits=True)[0]  # [len, vocab]
        theirs = torch.cat([hf_logits(folder, [prompt[: i + 1]]) for i in range(len(prompt))])  # [len, vocab]
        torch.testing.assert_close(ours, theirs, atol=1e-4, rtol=0)


def test_filter_agrees_with_logits_to_probs():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(200, 8, generator=g) * 2  # [rows, vocab]
    for t, k, p in [(1.0, 0, 1.0), (0.7, 5, 0.9), (1.3, 3, 1.0), (0.5, 0, 0.8), (0, 0, 1.0)]:
        ours = logits_to_probs(logits, t, k, p).double().numpy()
        assert abs(filtered_probs(logits, t, k, p) - ours).max() < 1e-6


def test_exact_distribution_is_normalised(folders):
    for params in (T1, T07):
        dist = exact_distribution(folders[0], REPEATS, N_TOKENS, params.temperature, params.top_k, params.top_p)
        assert abs(sum(dist.values()) - 1) < 1e-9
    assert len(exact_distribution(folders[0], REPEATS, N_TOKENS, 0.0)) == 1


def test_chi_square_pools_small_cells_and_flags_impossible_tokens():
    probs = {("a",): 0.5, ("b",): 0.49, ("c",): 0.006, ("d",): 0.004}
    from collections import Counter

    assert chi_square_pvalue(Counter({("a",): 500, ("b",): 490, ("c",): 6, ("d",): 4}), probs) > 0.99
    assert chi_square_pvalue(Counter({("a",): 500, ("b",): 490, ("e",): 1}), probs) == 0.0
    assert chi_square_pvalue(Counter({("a",): 600, ("b",): 400}), probs) < 1e-6


# ---- exactness ------------------------------------------------------------------------------


def test_ar_sanity(make_llm, exact):
    counts = sample_continuations(make_llm("ar"), REPEATS, N_TOKENS, T1, SAMPLES, BATCH, seed_offset=0)
    assert_exact(chi_square_pvalue(counts, exact(REPEATS, T1)))


@pytest.mark.parametrize("params, k", [(T1, 4), (T07, 2)], ids=["t1.0-k4", "t0.7-topk-topp-k2"])
def test_sd_model_drafter(make_llm, exact, params, k):
    llm = make_llm("sd", "model", k)
    assert_speculates(llm, REPEATS, params)
    counts = sample_continuations(llm, REPEATS, N_TOKENS, params, SAMPLES, BATCH, seed_offset=100_000)
    assert_exact(chi_square_pvalue(counts, exact(REPEATS, params)))


@pytest.mark.parametrize("params, k", [(T1, 4), (T07, 2)], ids=["t1.0-k4", "t0.7-topk-topp-k2"])
def test_sd_ngram_drafter(make_llm, exact, params, k):
    llm = make_llm("sd", "ngram", k)
    assert_speculates(llm, REPEATS, params)
    counts = sample_continuations(llm, REPEATS, N_TOKENS, params, SAMPLES, BATCH, seed_offset=200_000)
    assert_exact(chi_square_pvalue(counts, exact(REPEATS, params)))


@pytest.mark.parametrize("draft, params, k", [("model", T1, 2), ("ngram", T07, 4)], ids=["model-t1.0", "ngram-t0.7"])
def test_sd_batch1(make_llm, exact, draft, params, k):
    counts = sample_continuations(make_llm("sd", draft, k), REPEATS, N_TOKENS, params, SAMPLES_BATCH1, batch=1,
                                  seed_offset=310_000)
    assert_exact(chi_square_pvalue(counts, exact(REPEATS, params)))


@pytest.mark.parametrize("draft, params, k", [("model", T1, 2), ("ngram", T1, 4)], ids=["model-k2", "ngram-k4"])
def test_sd_batch_with_different_prompts(make_llm, exact, draft, params, k):
    """Rows of one batch have different prompt lengths (padding; with n-gram, uneven speculation)."""
    prompts = [REPEATS, SHORT]
    counts = sample_continuations_multi(make_llm("sd", draft, k), prompts, N_TOKENS, params, SAMPLES // 2, BATCH,
                                        seed_offset=400_000)
    # Each prompt's sample size is fixed by design, so the pooled test is, if anything, conservative.
    assert_exact(chi_square_pvalue_joint(counts, [exact(p, params) for p in prompts]))


def _greedy_acceptance(p, q, speculation, generators=None, spec_len=None, *, uniforms=None):
    """The known trap: accept while s_i == argmax p_{i-1} at temperature > 0, then t from p_n."""
    v = verify_greedy(p, speculation, spec_len)
    p_n = p[torch.arange(p.shape[0]), v.accepted]  # [batch, vocab]
    u = draw_uniforms(generators, 1, p.device)[:, 0] if uniforms is None else uniforms[:, 0]  # [batch]
    return Verification(accepted=v.accepted, token=inverse_cdf(p_n, u), speculation=speculation)


# A wrong rule shows at fewer samples than a right one needs to pass. With the n-gram drafter the
# first proposal here is never the target's argmax, so the error shows only at later positions.
@pytest.mark.parametrize("draft, samples", [("model", 4_000), ("ngram", 12_000)])
def test_harness_catches_greedy_acceptance(monkeypatch, make_llm, exact, draft, samples):
    monkeypatch.setattr("saguaro.strategies.sd.verify_sampled", _greedy_acceptance)
    counts = sample_continuations(make_llm("sd", draft, 2), REPEATS, N_TOKENS, T1, samples, BATCH,
                                  seed_offset=500_000)
    pvalue = chi_square_pvalue(counts, exact(REPEATS, T1))
    print(f"chi-square p = {pvalue:.4g}")
    assert pvalue < 1e-6


# ---- seeds and greedy -----------------------------------------------------------------------


@pytest.mark.parametrize("draft", ["model", "ngram"])
def test_same_seed_same_output(make_llm, draft):
    llm = make_llm("sd", draft, 4)
    params = [SamplingParams(temperature=0.9, top_k=6, seed=s, max_tokens=20, ignore_eos=True) for s in (1, 2, 3)]
    first = [r.token_ids for r in llm.generate([REPEATS, REPEATS, SHORT], params)]
    again = [r.token_ids for r in llm.generate([REPEATS, REPEATS, SHORT], params)]
    assert first == again
    assert first[0] != first[1]  # different seeds, same prompt


@pytest.mark.parametrize("draft", ["model", "ngram"])
def test_batch1_output_equals_batched_output_per_seed(make_llm, draft):
    """A seeded request does not depend on its batch companions, so the 20k batched samples also
    stand for the batch-1 path, which the chi-square above can afford to test only at 1,500."""
    llm = make_llm("sd", draft, 4)
    prompts = [REPEATS, SHORT, [4]] * 8
    params = [SamplingParams(temperature=0.7, top_k=5, top_p=0.9, seed=600_000 + i, max_tokens=12, ignore_eos=True)
              for i in range(len(prompts))]
    batched = [r.token_ids for r in llm.generate(prompts, params)]
    alone = [llm.generate([pr], pa)[0].token_ids for pr, pa in zip(prompts, params)]
    assert alone == batched


@pytest.mark.parametrize("draft", ["model", "ngram"])
@pytest.mark.parametrize("k", [1, 3, 5])
def test_greedy_sd_equals_greedy_ar(make_llm, draft, k):
    prompts = [REPEATS, SHORT, [4], [1, 1, 2, 3, 5, 0, 7]]
    params = SamplingParams(temperature=0, max_tokens=24, ignore_eos=True)
    ar = [r.token_ids for r in make_llm("ar").generate(prompts, params)]
    sd = [r.token_ids for r in make_llm("sd", draft, k).generate(prompts, params)]
    assert sd == ar
