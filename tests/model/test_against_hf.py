"""Our decoder against HF transformers on the bundled GGUF models (transformers dequantizes the
same file itself): float32 logits, and greedy tokens step by step."""

import pytest
import torch

from saguaro.loading.bundled import bundled_gguf
from saguaro.loading.loader import load_model
from saguaro.engine.build import Parts
from saguaro.engine.engine import Engine
from saguaro.engine.runner import ModelRunner
from saguaro.sampling.params import SamplingParams
from saguaro.strategies.ar import ARStrategy
from saguaro.strategies.factory import StrategyOptions

pytestmark = pytest.mark.slow

PROMPTS = [
    "<|im_start|>user\nWrite a Python function that checks if a string is a palindrome.<|im_end|>\n<|im_start|>assistant\n",
    "def merge_sorted(a, b):\n    \"\"\"Merge two sorted lists.\"\"\"\n",
    "The three laws of thermodynamics are",
]


def hf_model(name):
    from transformers import AutoModelForCausalLM

    path = bundled_gguf(name)
    return AutoModelForCausalLM.from_pretrained(str(path.parent), gguf_file=path.name, dtype=torch.float32).eval()


def hf_greedy(model, ids, steps):
    out, past = [], None
    x = torch.tensor([ids])
    with torch.inference_mode():
        for _ in range(steps):
            res = model(x, past_key_values=past, use_cache=True)
            past = res.past_key_values
            t = int(res.logits[0, -1].argmax())
            out.append(t)
            x = torch.tensor([[t]])
    return out


def our_greedy(loaded, ids, steps):
    """Through the step-wise engine and its AR strategy."""
    runner = ModelRunner(loaded.decoder)
    parts = Parts(runner, ARStrategy(runner), loaded.tokenizer, loaded.config, StrategyOptions())
    engine = Engine.from_parts(parts, max_batch=1, max_seq_len=len(ids) + steps)
    engine.add_request(ids, SamplingParams(temperature=0, max_tokens=steps, ignore_eos=True))
    out = []
    while engine.has_unfinished():
        out += [t for o in engine.step() for t in o.new_token_ids]
    return out


@pytest.fixture(scope="module", params=["qwen2.5-coder-0.5b", "qwen2.5-coder-1.5b"])
def pair(request):
    ours = load_model(request.param, dtype="float32")
    return request.param, ours, hf_model(request.param)


def test_logits_match_hf(pair):
    name, ours, hf = pair
    ids = ours.tokenizer.encode(PROMPTS[0])
    runner = ModelRunner(ours.decoder)
    cache = runner.new_cache(1, len(ids))
    mine = runner.feed(cache, [ids], all_logits=True)[0]  # [T, vocab]
    with torch.inference_mode():
        ref = hf(torch.tensor([ids])).logits[0].float()
    assert mine.shape == ref.shape
    assert (mine - ref).abs().max().item() < 1e-3, name
    assert torch.equal(mine.argmax(-1), ref.argmax(-1))


def test_greedy_32_tokens_match_hf(pair):
    name, ours, hf = pair
    # The 1.5B's float32 step-by-step HF run costs minutes on an AVX2 CPU: one prompt there.
    for prompt in PROMPTS if name.endswith("0.5b") else PROMPTS[:1]:
        ids = ours.tokenizer.encode(prompt)
        assert our_greedy(ours, ids, 32) == hf_greedy(hf, ids, 32), (name, prompt)
