"""The quantize transform: which linears get which kernel, and what `auto` resolves to."""

import pytest
import torch

from saguaro.errors import InvalidRequestError
from saguaro.loading.loader import load_model
from saguaro.model.decoder import Linear
from saguaro.quant.grids import Int6Grid, grid_from_float
from saguaro.quant.linear import Int4Linear, Int8Linear
from saguaro.quant.transform import quantize_decoder, resolve_scheme
from saguaro.testing.random_model import write_random_model

LINEARS = ("qkv", "o", "gate_up", "down")


@pytest.fixture(autouse=True)
def torch_kernels(monkeypatch):
    """These tests name PyTorch's kernel classes; test_native.py covers the native choice."""
    monkeypatch.setenv("SAGUARO_QUANT_KERNELS", "torch")


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return str(write_random_model(tmp_path_factory.mktemp("quant") / "m", seed=5, vocab=48))


def logits(decoder) -> torch.Tensor:
    tokens = torch.tensor([[1, 5, 9, 2, 7]])
    positions = torch.arange(5).unsqueeze(0)
    mask = torch.ones(5, 5, dtype=torch.bool).tril().unsqueeze(0)
    return decoder.forward(tokens, positions, decoder.new_cache(1, 5), positions, mask).float()


def kinds(decoder) -> set[type]:
    return {type(getattr(layer, name)) for layer in decoder.layers for name in LINEARS}


@pytest.mark.parametrize("scheme, kernel, tol", [("int8", Int8Linear, 0.02), ("int4", Int4Linear, 0.25)])
def test_quantized_model_stays_close_to_float(folder, scheme, kernel, tol):
    ref = logits(load_model(folder, dtype="float32").decoder)
    loaded = load_model(folder, dtype="float32", quantize=scheme)
    assert loaded.quantization == scheme
    assert kinds(loaded.decoder) == {kernel}
    assert type(loaded.decoder.lm_head) is Int8Linear  # a float checkpoint's head keeps 8 bits
    out = logits(loaded.decoder)
    assert (out - ref).norm() / ref.norm() < tol  # relative error of the logits
    assert not torch.equal(out, ref)


def test_auto_keeps_float_checkpoints_and_float32_as_they_are(folder):
    assert load_model(folder, dtype="float32").quantization == "none"
    assert load_model(folder, dtype="bfloat16").quantization == "none"  # no GGUF encoding to follow
    assert kinds(load_model(folder, dtype="float32").decoder) == {Linear}


def test_auto_follows_the_files_encoding():
    layer = "model.layers.0.self_attn.q_proj.weight"
    assert resolve_scheme("auto", {}) == "none"
    assert resolve_scheme("auto", {layer: 4, "model.layers.0.mlp.down_proj.weight": 6, "x": 4}) == "int4"
    assert resolve_scheme("auto", {layer: 8}) == "int8"
    assert resolve_scheme("auto", {layer: 16}) == "none"
    assert resolve_scheme("int8", {layer: 4}) == "int8"


def test_native_grids_are_used_and_wide_tensors_get_int8(folder):
    decoder = load_model(folder, dtype="float32", quantize="none").decoder
    cfg = decoder.cfg
    q_name = "model.layers.0.self_attn.q_proj.weight"
    # A grid unlike min-max rounding of the float weight: proves the file's own grid is used.
    native = grid_from_float(torch.full((cfg.q_size, cfg.hidden_size), 0.01), 32)
    bits = {q_name: 4, "model.layers.1.self_attn.v_proj.weight": 6, "lm_head.weight": 6}
    # PyTorch's kernels have no int6: a Q6_K head's own grid is left for int8 of its weight.
    six = Int6Grid(torch.zeros(cfg.vocab_size, cfg.hidden_size, dtype=torch.uint8),
                   torch.ones(cfg.vocab_size, cfg.hidden_size // 16))
    assert quantize_decoder(decoder, "int4", bits, {q_name: native, "lm_head.weight": six}) == "int4"
    qkv0, qkv1 = decoder.layers[0].qkv, decoder.layers[1].qkv
    assert type(qkv0) is Int4Linear and type(qkv1) is Int8Linear  # 6-bit v: the whole fused qkv
    x = torch.ones(1, cfg.hidden_size)
    q_out = qkv0(x)[0, :cfg.q_size] - (qkv0.bias[:cfg.q_size] if qkv0.bias is not None else 0)
    torch.testing.assert_close(q_out, torch.full((cfg.q_size,), 0.01 * cfg.hidden_size), atol=1e-4, rtol=1e-4)
    assert type(decoder.lm_head) is Int8Linear


def test_subset_head_is_quantized_inside(folder):
    loaded = load_model(folder, dtype="float32", quantize="int4", head_tokens=20)
    head = loaded.decoder.lm_head
    assert type(head.inner) is Int8Linear
    out = logits(loaded.decoder)
    assert torch.isinf(out[..., 21:]).all() and torch.isfinite(out[..., :20]).all()


def test_bad_scheme_is_a_user_error(folder):
    with pytest.raises(InvalidRequestError, match="int4"):
        load_model(folder, quantize="int3")


def test_a_drafts_head_takes_the_layers_scheme(folder):
    assert type(load_model(folder, dtype="float32", quantize="int4", draft=True).decoder.lm_head) is Int4Linear
    subset = load_model(folder, dtype="float32", quantize="int4", head_tokens=20, draft=True).decoder.lm_head
    assert type(subset.inner) is Int4Linear
