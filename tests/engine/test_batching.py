"""A batch of prompts of different lengths decodes exactly as each prompt alone; KV rollback
(truncate and re-feed) reproduces the same logits."""

import pytest
import torch

from saguaro import LLM, SamplingParams
from saguaro.engine.runner import ModelRunner
from saguaro.loading.loader import load_model
from saguaro.testing.random_model import write_random_model

GREEDY = SamplingParams(temperature=0, max_tokens=24, ignore_eos=True)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return write_random_model(tmp_path_factory.mktemp("tiny") / "m", seed=3, scale=2.0)


def test_batch_equals_single_tiny(tiny):
    llm = LLM(target=str(tiny), dtype="float32")
    prompts = [[1, 2, 3], [5] * 17, [7, 8, 9, 10, 11, 12, 13], [4]]
    batch = llm.generate(prompts, GREEDY)
    for prompt, res in zip(prompts, batch):
        assert res.token_ids == llm.generate([prompt], GREEDY)[0].token_ids


def test_finished_rows_leave_the_batch(tiny):
    llm = LLM(target=str(tiny), dtype="float32")
    params = [SamplingParams(temperature=0, max_tokens=n, ignore_eos=True) for n in (3, 20, 9)]
    out = llm.generate([[1, 2], [3, 4, 5], [6]], params)
    assert [len(r.token_ids) for r in out] == [3, 20, 9]
    for prompt, p, r in zip([[1, 2], [3, 4, 5], [6]], params, out):
        assert r.token_ids == llm.generate([prompt], p)[0].token_ids


def test_sampled_batch_is_seed_reproducible(tiny):
    llm = LLM(target=str(tiny), dtype="float32")
    params = [SamplingParams(temperature=1.0, seed=s, max_tokens=16, ignore_eos=True) for s in (1, 2)]
    a = llm.generate([[1, 2, 3], [4, 5]], params)
    alone = llm.generate([[4, 5]], params[1])[0]
    assert a[1].token_ids == alone.token_ids  # a seed does not depend on its batch companions
    b = llm.generate([[1, 2, 3], [4, 5]], params)
    assert [r.token_ids for r in a] == [r.token_ids for r in b]


def test_rollback_reproduces_logits(tiny):
    runner = ModelRunner(load_model(str(tiny), dtype="float32").decoder)
    cache = runner.new_cache(2, 64)
    runner.prefill(cache, [[1, 2, 3, 4], [5, 6]])
    first = runner.feed(cache, [[7, 8, 9], [10, 11, 12]], all_logits=True)  # [2, 3, vocab]
    cache.truncate(0, 5)  # keep token 7 of row 0 only
    cache.truncate(1, 2)  # row 1 rolls back all three
    again = runner.feed(cache, [[8, 9], [10, 11, 12]], all_logits=True)
    assert torch.allclose(again[0, :2], first[0, 1:], atol=1e-5)
    assert torch.allclose(again[1], first[1], atol=1e-5)
    assert cache.lengths == [7, 5]


def test_rollback_forgets_rejected_tokens(tiny):
    runner = ModelRunner(load_model(str(tiny), dtype="float32").decoder)
    cache = runner.new_cache(1, 64)
    runner.prefill(cache, [[1, 2, 3]])
    clean = runner.feed(cache, [[4, 5]], all_logits=True)[0, -1]
    cache.truncate(0, 3)
    runner.feed(cache, [[9, 9, 9]], all_logits=True)  # rejected speculation
    cache.truncate(0, 3)
    assert torch.allclose(runner.feed(cache, [[4, 5]], all_logits=True)[0, -1], clean, atol=1e-5)


@pytest.mark.slow
def test_batch_equals_single_real_model():
    llm = LLM(target="qwen2.5-coder-0.5b", dtype="float32")
    prompts = ["def add(a, b):", "Write a haiku about the sea.\n", "import numpy as np\n# compute the mean of"]
    params = SamplingParams(temperature=0, max_tokens=16, ignore_eos=True)
    batch = llm.generate(prompts, params)
    for prompt, res in zip(prompts, batch):
        assert res.token_ids == llm.generate([prompt], params)[0].token_ids
