"""One decoder for Qwen2 (QKV bias), Qwen3 (QK norm) and Llama-3 (RoPE scaling), tied or untied
embeddings: logits equal HF transformers' on tiny random checkpoints of each."""

import pytest
import torch

from saguaro.engine.runner import ModelRunner
from saguaro.loading.loader import load_model
from saguaro.model.config import ModelConfig
from saguaro.model.rope import inverse_frequencies
from saguaro.testing.random_model import random_config, write_random_model

LLAMA3_SCALING = {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                  "original_max_position_embeddings": 64}
CASES = {
    "qwen2": dict(model_type="qwen2"),
    "qwen2-tied": dict(model_type="qwen2", tie_word_embeddings=True),
    "qwen3": dict(model_type="qwen3"),
    "llama3": dict(model_type="llama", rope_scaling=LLAMA3_SCALING, rope_theta=500000.0),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_logits_match_transformers(tmp_path, case):
    from transformers import AutoModelForCausalLM

    folder = write_random_model(tmp_path / case, seed=4, vocab=48, context=512, **CASES[case])
    ids = [1, 5, 9, 2, 7, 3, 3, 8, 11, 4] * 12  # 120 tokens: past the scaled band of llama3
    runner = ModelRunner(load_model(str(folder), dtype="float32").decoder)
    cache = runner.new_cache(1, len(ids))
    ours = runner.feed(cache, [ids], all_logits=True)[0]
    hf = AutoModelForCausalLM.from_pretrained(str(folder), dtype=torch.float32).eval()
    with torch.inference_mode():
        ref = hf(torch.tensor([ids])).logits[0]
    assert (ours - ref).abs().max().item() < 1e-4, case


def test_llama3_scaling_changes_only_long_wavelengths():
    plain = ModelConfig.from_hf(random_config(model_type="llama", rope_theta=500000.0))
    scaled = ModelConfig.from_hf(random_config(model_type="llama", rope_theta=500000.0, rope_scaling=LLAMA3_SCALING))
    a, b = inverse_frequencies(plain), inverse_frequencies(scaled)
    assert torch.equal(a[:1], b[:1])  # the highest frequency (wavelength < 16) is kept
    assert torch.allclose(b[-1], a[-1] / 8.0)  # the longest wavelength slowed by the factor
