"""A quantized GGUF load reads its matrices from their blocks, and gives bit for bit the decoder
that dequantizing every tensor first gives: on the bundled pair, whose files hold every type
the pair uses (Q4_K, Q5_0, Q6_K, Q8_0, F32)."""

import dataclasses

import pytest
import torch

from saguaro.loading import loader
from saguaro.loading.bundled import bundled_gguf
from saguaro.loading.gguf_file import GGUFWeights
from saguaro.loading.snapshot import describe_decoder
from saguaro.loading.weights import fuse_weights
from saguaro.model.config import ModelConfig
from saguaro.model.decoder import Decoder
from saguaro.model.head_subset import frequent_tokens, restrict_head


def quantized(path, layers: int, from_blocks: bool, head_tokens: int | None = None):
    reader, hf_cfg, tokenizer = loader._gguf_parts(path)
    cfg = dataclasses.replace(ModelConfig.from_hf(hf_cfg), num_layers=layers)
    weights = GGUFWeights(reader, hf_cfg)
    fused = fuse_weights(cfg, set(weights.named), weights.float, "cpu", torch.bfloat16,
                         weights.shapes() if from_blocks else None)
    assert fused["layers.0.qkv"].is_meta == from_blocks
    loaded = loader.LoadedModel(Decoder(cfg, fused, "cpu", torch.bfloat16), tokenizer, cfg, str(path), gguf=weights)
    if head_tokens:
        restrict_head(loaded.decoder, frequent_tokens(cfg.vocab_size, head_tokens, set(tokenizer.eos_token_ids)))
    scheme = loader._quantize(loaded, "auto", same_head=head_tokens is not None)
    return scheme, describe_decoder(loaded.decoder)


def assert_same(a, b):
    (scheme_a, (spec_a, tensors_a)), (scheme_b, (spec_b, tensors_b)) = a, b
    assert scheme_a == scheme_b == "int4"
    assert spec_a == spec_b
    for name, t in tensors_a.items():
        assert not t.is_meta
        assert t.dtype == tensors_b[name].dtype and torch.equal(t, tensors_b[name]), name


@pytest.mark.slow
def test_the_draft_read_from_its_blocks_is_the_dequantized_one(qwen_gguf):
    """Q5_0 layers rounded to int4 from floats, Q4_K/Q6_K downs, a Q8_0 head cut to a subset."""
    assert_same(quantized(qwen_gguf, 24, True, head_tokens=4096), quantized(qwen_gguf, 24, False, head_tokens=4096))


@pytest.mark.slow
def test_the_targets_first_layers_read_from_their_blocks():
    """Q4_K grids, a QKV of Q4_K and Q6_K parts at int8, Q6_K downs and head at int6."""
    target = bundled_gguf("qwen2.5-coder-1.5b")
    assert_same(quantized(target, 4, True), quantized(target, 4, False))
