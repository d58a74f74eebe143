"""`random:<shape>[:seed]` references: real shapes, reproducible weights, one shared toy tokenizer."""

import pytest
import torch

from saguaro import LLM, SamplingParams
from saguaro.errors import ModelLoadError
from saguaro.loading.loader import load_model
from saguaro.loading.random_ref import SHAPES, random_hf_config


def logits(ref):
    loaded = load_model(ref, dtype="float32")
    from saguaro.engine.runner import ModelRunner

    runner = ModelRunner(loaded.decoder)
    return runner.feed(runner.new_cache(1, 16), [[1, 2, 3]])[0]


def test_same_seed_same_weights_other_seed_other_weights():
    a, b, c = logits("random:tiny"), logits("random:tiny:0"), logits("random:tiny:1")
    assert torch.equal(a, b)
    assert not torch.allclose(a, c)


@pytest.mark.parametrize("ref", ["random:nope", "random:tiny:x", "random:tiny:1:2"])
def test_bad_references_are_clear_errors(ref):
    with pytest.raises(ModelLoadError, match="random"):
        load_model(ref)


def test_real_shapes():
    cfg = random_hf_config("qwen2.5-7b")
    assert (cfg["hidden_size"], cfg["num_hidden_layers"], cfg["intermediate_size"], cfg["vocab_size"]) == (
        3584, 28, 18944, 152064)
    assert set(SHAPES) >= {"qwen2.5-0.5b", "qwen2.5-1.5b", "qwen2.5-7b"}


def test_random_pair_runs_sd_exactly():
    ar = LLM(target="random:tiny", dtype="float32")
    sd = LLM(target="random:tiny", draft="random:tiny:1", mode="sd", k=3, dtype="float32")
    params = SamplingParams(temperature=0, max_tokens=12, ignore_eos=True)
    assert sd.generate([[1, 2, 3]], params)[0].token_ids == ar.generate([[1, 2, 3]], params)[0].token_ids
