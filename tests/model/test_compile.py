"""The decoder forward is capture-ready: the static decode step compiles as a single graph
(torch.compile with fullgraph=True raises on any graph break, e.g. a host read), is not
recompiled when lengths change, and matches eager; GQA attention,
which no longer repeats K/V, matches the same model with its KV heads repeated in the weights."""

import copy
import dataclasses
import shutil

import pytest
import torch

from saguaro.engine.runner import append_inputs, causal_mask
from saguaro.loading.loader import load_model
from saguaro.model.decoder import Linear


@pytest.fixture(scope="module")
def decoder():
    return load_model("random:tiny", dtype="float32").decoder


def _filled_cache(decoder, batch: int, capacity: int):
    cache = decoder.new_cache(batch, capacity)
    g = torch.Generator().manual_seed(1)
    for t in cache.k + cache.v:
        t.copy_(torch.randn(t.shape, generator=g))
    return cache


def _decode_inputs(lengths: list[int], seed: int, vocab: int):
    g = torch.Generator().manual_seed(seed)
    tokens = torch.randint(0, vocab, (len(lengths), 1), generator=g)
    positions = torch.tensor(lengths).unsqueeze(1)  # [B, 1]: slot = position for a plain decode step
    mask = causal_mask(lengths, 1, max(lengths) + 1, "cpu")
    return tokens, positions, mask


@pytest.mark.skipif(not any(shutil.which(c) for c in ("c++", "g++", "clang++")),
                    reason="inductor needs a C++ compiler on the CPU")
def test_static_decode_step_compiles_once_and_matches_eager(decoder):
    """The capture-ready decode step (static shapes: attention over the whole capacity, mask made
    from a device lengths tensor) compiles as one graph and is never recompiled as lengths
    change; it matches eager attention over just the filled slots. Tiny model: 10-20 s."""
    torch._dynamo.reset()

    def step(tokens, lengths, cache):
        slots, mask = append_inputs(lengths, 1, cache.capacity)
        return decoder.compute(tokens, slots, cache, slots, mask)

    compiled = torch.compile(step, fullgraph=True, dynamic=False)
    batch, capacity = 2, 32
    eager_cache, graph_cache = _filled_cache(decoder, batch, capacity), _filled_cache(decoder, batch, capacity)
    try:
        # No FX graph cache: its key leaves out ATEN_CPU_CAPABILITY, and a graph compiled under
        # AVX-512 then reused with ATEN_CPU_CAPABILITY=avx2 returned NaN (torch 2.13).
        with torch._dynamo.config.patch(error_on_recompile=True), torch._inductor.config.patch(fx_graph_cache=False):
            for seed, lengths in enumerate([[5, 9], [7, 20], [31, 0]]):  # new values, one graph
                tokens, positions, mask = _decode_inputs(lengths, seed, decoder.cfg.vocab_size)
                ref = decoder.forward(tokens, positions, eager_cache, positions, mask)
                with torch.inference_mode():
                    out = compiled(tokens, torch.tensor(lengths), graph_cache)
                torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)
                for a, b in zip(eager_cache.k + eager_cache.v, graph_cache.k + graph_cache.v):
                    torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-6)  # the step's K/V were written
    finally:
        torch._dynamo.reset()


def _with_repeated_kv_heads(decoder):
    """The same model as plain multi-head attention: each KV head's weights repeated `rep` times."""
    cfg = decoder.cfg
    rep = cfg.num_heads // cfg.num_kv_heads
    mha = copy.copy(decoder)
    mha.cfg = dataclasses.replace(cfg, num_kv_heads=cfg.num_heads)

    def repeat(rows: torch.Tensor) -> torch.Tensor:
        q, k, v = rows.split([cfg.q_size, cfg.kv_size, cfg.kv_size], dim=0)
        k, v = (x.unflatten(0, (cfg.num_kv_heads, -1)).repeat_interleave(rep, 0).flatten(0, 1) for x in (k, v))
        return torch.cat([q, k, v])

    mha.layers = []
    for layer in decoder.layers:
        new = copy.copy(layer)
        bias = layer.qkv.bias
        new.qkv = Linear(repeat(layer.qkv.weight), None if bias is None else repeat(bias))
        mha.layers.append(new)
    return mha


@pytest.mark.parametrize("lengths,width", [([5, 9, 0], 1), ([3, 12, 7], 4)])
def test_gqa_matches_repeated_kv_heads(decoder, lengths, width):
    assert decoder.cfg.num_heads > decoder.cfg.num_kv_heads
    mha = _with_repeated_kv_heads(decoder)
    kv_len = max(lengths) + width
    g = torch.Generator().manual_seed(2)
    tokens = torch.randint(0, decoder.cfg.vocab_size, (len(lengths), width), generator=g)
    slots = torch.tensor(lengths).unsqueeze(1) + torch.arange(width)
    mask = causal_mask(lengths, width, kv_len, "cpu")
    gqa_cache, mha_cache = decoder.new_cache(len(lengths), kv_len), mha.new_cache(len(lengths), kv_len)
    gen = torch.Generator().manual_seed(3)
    for gk, gv, mk, mv in zip(gqa_cache.k, gqa_cache.v, mha_cache.k, mha_cache.v):
        gk.copy_(torch.randn(gk.shape, generator=gen))
        gv.copy_(torch.randn(gv.shape, generator=gen))
        rep = mk.shape[1] // gk.shape[1]
        mk.copy_(gk.repeat_interleave(rep, 1))
        mv.copy_(gv.repeat_interleave(rep, 1))
    out = decoder.forward(tokens, slots, gqa_cache, slots, mask)
    ref = mha.forward(tokens, slots, mha_cache, slots, mask)
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)
