"""The fused layer steps (glue.cpp) against PyTorch's ops they replace: rotary and cache writes
bit for bit, RMS norms to float32 rounding (the sum runs in another order), and the transform
that gives a model on Saguaro's kernels these ops."""

from types import SimpleNamespace

import pytest
import torch

from saguaro.kv_cache import KVCache
from saguaro.loading.loader import load_model
from saguaro.model.decoder import TORCH_OPS, rms_norm
from saguaro.model.rope import apply_rotary
from saguaro.quant import native as native_choice
from saguaro.quant.native import build
from saguaro.quant.native.glue import native_ops
from saguaro.testing.random_model import write_random_model

G = torch.Generator().manual_seed(0)


@pytest.fixture(scope="module")
def ops():
    assert build.load_kernels(), "Saguaro's CPU kernels must build here (a C++ compiler and ninja)"
    return native_ops()


def qkv_views(b: int, t: int, heads: int, kv_heads: int, hd: int, dtype):
    """q, k, v as the decoder makes them: transposed views into one QKV output."""
    qkv = torch.randn(b, t, (heads + 2 * kv_heads) * hd, generator=G).to(dtype)
    q, k, v = qkv.split([heads * hd, kv_heads * hd, kv_heads * hd], dim=-1)
    return tuple(x.view(b, t, -1, hd).transpose(1, 2) for x in (q, k, v))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("shape", [(1, 1, 1536), (3, 5, 896), (2, 4, 3, 128)])
def test_rms_norm_is_the_reference_up_to_the_order_of_its_sum(ops, dtype, shape):
    x = (torch.randn(*shape, generator=G) * 3).to(dtype)
    w = torch.randn(shape[-1], generator=G).to(dtype)
    got, ref = ops.rms_norm(x, w, 1e-6), rms_norm(x, w, 1e-6)
    assert got.shape == ref.shape and got.dtype == dtype
    # One float32 rounding of the scale may move a bfloat16 result by one step.
    step = 2 ** -7 if dtype == torch.bfloat16 else 2 ** -21
    assert bool(((got.float() - ref.float()).abs() <= step * ref.float().abs() + 1e-6).all())
    assert torch.equal(ops.rms_norm(torch.zeros_like(x), w, 1e-6), torch.zeros_like(x))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_rotary_is_the_reference_bit_for_bit_on_strided_views(ops, dtype):
    q, k, _ = qkv_views(2, 5, 6, 2, 64, dtype)
    cos = torch.randn(2, 1, 5, 64, generator=G).to(dtype)
    sin = torch.randn(2, 1, 5, 64, generator=G).to(dtype)
    for x in (q, k):
        got = ops.rotary(x, cos, sin)
        assert torch.equal(got, apply_rotary(x, cos, sin)) and got.is_contiguous()


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_cache_writes_match_kvcache_write(ops, dtype):
    _, k, v = qkv_views(3, 4, 4, 2, 16, dtype)
    cfg = SimpleNamespace(num_kv_heads=2, head_dim=16, num_layers=2)  # all a cache reads of a config
    ref, got = (KVCache(cfg, 3, 12, "cpu", dtype, max_rows=5) for _ in range(2))
    slots = torch.tensor([[0, 1, 2, 3], [8, 9, 10, 11], [11, 7, 3, 0]])
    TORCH_OPS.write_kv(ref, 1, slots, k, v)
    ops.write_kv(got, 1, slots, k, v)
    assert all(torch.equal(a, b) for a, b in zip(ref.k + ref.v, got.k + got.v))
    assert bool(got.k[1][0, :, 0].abs().sum() > 0) and bool(got.k[0].abs().sum() == 0)
    with pytest.raises(RuntimeError, match="outside the cache"):
        ops.write_kv(got, 0, slots + 1, k, v)


def test_the_native_transform_gives_the_model_fused_ops(tmp_path, monkeypatch):
    folder = str(write_random_model(tmp_path / "m", seed=2, vocab=48, hidden=128, intermediate=256, heads=4,
                                    kv_heads=2))
    monkeypatch.setenv(native_choice.KERNELS_ENV, "native")
    fused = load_model(folder, dtype="float32", quantize="int4").decoder
    assert fused.ops.rms_norm is torch.ops.saguaro_glue.rms_norm
    assert load_model(folder, dtype="float32", quantize="none").decoder.ops is TORCH_OPS
    monkeypatch.setenv(native_choice.KERNELS_ENV, "torch")
    assert load_model(folder, dtype="float32", quantize="int4").decoder.ops is TORCH_OPS

    tokens = torch.tensor([[1, 5, 9, 2, 7]])
    positions = torch.arange(5).unsqueeze(0)
    mask = torch.ones(5, 5, dtype=torch.bool).tril().unsqueeze(0)
    out = fused.forward(tokens, positions, fused.new_cache(1, 5), positions, mask)
    fused.ops = TORCH_OPS
    ref = fused.forward(tokens, positions, fused.new_cache(1, 5), positions, mask)
    torch.testing.assert_close(out, ref, rtol=1e-4, atol=1e-4)
