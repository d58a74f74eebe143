"""RoPE's cos/sin table is built once, at construction, and `cos_sin` is a pure gather: no host
sync, so a forward using it can be captured. Values are those of the float32 formula, cast."""

import contextlib

import pytest
import torch

from saguaro.engine.runner import causal_mask
from saguaro.loading.loader import load_model
from saguaro.model.config import ModelConfig
from saguaro.model.rope import POSITION_SLACK, Rotary, inverse_frequencies
from saguaro.testing.random_model import random_config

CPU = torch.device("cpu")


def _config(context: int = 256, **overrides) -> ModelConfig:
    return ModelConfig.from_hf(random_config(context=context, **overrides))


def _reference(cfg: ModelConfig, length: int, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    t = torch.arange(length, dtype=torch.float32)
    freqs = torch.outer(t, inverse_frequencies(cfg))
    emb = torch.cat([freqs, freqs], dim=-1)
    return emb.cos().to(dtype), emb.sin().to(dtype)


@contextlib.contextmanager
def no_host_reads(monkeypatch):
    """Fails any read of a tensor's value into Python (each one a device->host sync on a GPU)."""

    def refuse(*_args, **_kwargs):
        raise AssertionError("a tensor value was read on the host")

    with monkeypatch.context() as m:
        for name in ("item", "tolist", "__int__", "__index__", "__bool__", "__float__"):
            m.setattr(torch.Tensor, name, refuse)
        yield


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_table_covers_context_plus_slack_with_the_float32_formula(dtype):
    cfg = _config(context=300)
    rot = Rotary(cfg, CPU, dtype)
    assert rot.length == 300 + POSITION_SLACK
    cos, sin = _reference(cfg, 256, dtype)  # the old lazily grown table's first size
    positions = torch.tensor([[0, 1, 255], [17, 100, 3]])
    c, s = rot.cos_sin(positions)
    assert c.shape == s.shape == (2, 1, 3, cfg.head_dim) and c.dtype == dtype
    assert torch.equal(c[:, 0], cos[positions]) and torch.equal(s[:, 0], sin[positions])
    full_cos, full_sin = _reference(cfg, rot.length, dtype)
    c, s = rot.cos_sin(torch.tensor([[rot.length - 1]]))
    assert torch.equal(c[0, 0, 0], full_cos[-1]) and torch.equal(s[0, 0, 0], full_sin[-1])


def test_cos_sin_reads_nothing_on_the_host(monkeypatch):
    rot = Rotary(_config(), CPU, torch.float32)
    positions = torch.tensor([[5, 6, 7]])
    with no_host_reads(monkeypatch):
        cos, sin = rot.cos_sin(positions)
    assert cos.shape == (1, 1, 3, rot.inv_freq.numel() * 2)


def test_position_past_the_table_is_an_error_not_garbage():
    rot = Rotary(_config(), CPU, torch.float32, length=16)
    rot.cos_sin(torch.tensor([[15]]))
    with pytest.raises(IndexError):
        rot.cos_sin(torch.tensor([[16]]))


def test_reserve_grows_only_when_needed():
    cfg = _config()
    rot = Rotary(cfg, CPU, torch.float32, length=16)
    table = rot._cos
    rot.reserve(10)
    assert rot.length == 16 and rot._cos is table
    rot.reserve(40)
    assert rot.length == 40
    cos, sin = _reference(cfg, 40, torch.float32)
    c, s = rot.cos_sin(torch.arange(40).unsqueeze(0))
    assert torch.equal(c[0, 0], cos) and torch.equal(s[0, 0], sin)


def test_forward_covers_its_kv_len_and_reads_nothing_on_the_host(monkeypatch):
    """Positions never exceed slots (< kv_len): a forward reserves kv_len, so even a table built
    too short (a draft whose context is smaller than its target's) cannot be overrun."""
    dec = load_model("random:tiny", dtype="float32").decoder
    lengths, width, kv_len = [20, 33], 3, 36
    tokens = torch.tensor([[1, 2, 3], [4, 5, 6]])
    slots = torch.tensor(lengths).unsqueeze(1) + torch.arange(width)
    mask = causal_mask(lengths, width, kv_len, "cpu")
    ref = dec.forward(tokens, slots, dec.new_cache(2, kv_len), slots, mask)
    dec.rotary = Rotary(dec.cfg, CPU, torch.float32, length=8)
    with no_host_reads(monkeypatch):
        out = dec.forward(tokens, slots, dec.new_cache(2, kv_len), slots, mask)
    assert dec.rotary.length == kv_len
    assert torch.equal(out, ref)
