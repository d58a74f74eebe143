"""The PyTorch dequantization against gguf-py's numpy one: the same bits, for every block type."""

import numpy as np
import pytest
from gguf.constants import GGML_QUANT_SIZES, GGMLQuantizationType as T
from gguf.quants import dequantize as reference

from saguaro.loading import gguf_dequant
from saguaro.loading.gguf_dequant import BLOCKS, dequantize
from saguaro.loading.gguf_reader import GGUFFile

# byte offsets of each block's fp16 scales: random bytes there could be NaN or infinity
FP16_AT = {T.Q4_0: [0], T.Q4_1: [0, 2], T.Q5_0: [0], T.Q5_1: [0, 2], T.Q8_0: [0], T.Q4_K: [0, 2],
           T.Q5_K: [0, 2], T.Q6_K: [208], T.Q2_K: [80, 82], T.Q3_K: [108]}


def random_blocks(kind: T, blocks: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    _, size = GGML_QUANT_SIZES[kind]
    raw = rng.integers(0, 256, (blocks, size), dtype=np.uint8)
    for at in FP16_AT[kind]:
        raw[:, at:at + 2] = (rng.standard_normal((blocks, 1)) * 0.05).astype(np.float16).view(np.uint8)
    return raw.reshape(-1)


def same_bits(ours, expected) -> bool:
    return np.array_equal(ours.numpy().view(np.int32), np.asarray(expected, dtype=np.float32).view(np.int32))


@pytest.mark.parametrize("kind", sorted(BLOCKS, key=lambda k: k.value), ids=lambda k: k.name)
def test_every_block_type_gives_gguf_pys_bits(kind, monkeypatch):
    monkeypatch.setattr(gguf_dequant, "CHUNK_BLOCKS", 7)  # chunks that do not divide the blocks
    block, _ = GGML_QUANT_SIZES[kind]
    raw = random_blocks(kind, 40, seed=kind.value)
    ours = dequantize(raw, kind, (10, 4 * block))
    assert ours.shape == (10, 4 * block)
    assert same_bits(ours, reference(raw, kind).reshape(10, 4 * block))


@pytest.mark.parametrize("kind", [T.Q2_K, T.Q3_K], ids=lambda k: k.name)
def test_types_without_a_torch_function_fall_back_to_gguf_py(kind):
    assert kind not in BLOCKS
    raw = random_blocks(kind, 4, seed=1)
    assert same_bits(dequantize(raw, kind, (4, 256)), reference(raw, kind).reshape(4, 256))


def test_float_types():
    rng = np.random.default_rng(0)
    values = rng.standard_normal(64).astype(np.float32)
    for kind, raw in [(T.F32, values.view(np.uint8)), (T.F16, values.astype(np.float16).view(np.uint8)),
                      (T.BF16, (values.view(np.uint32) >> 16).astype(np.uint16).view(np.uint8))]:
        raw.setflags(write=False)  # as a mapped file is
        ours = dequantize(raw, kind, (8, 8))
        ours[0, 0] = 1.0  # the result is the caller's to write: a copy, never the map
        assert same_bits(ours[1:], reference(raw, kind).reshape(8, 8)[1:]), kind.name


def test_every_type_of_the_bundled_pair(qwen_gguf):
    """One tensor of each type in the bundled draft's file, as read from the file."""
    seen = {}
    for t in GGUFFile(qwen_gguf).tensors:
        if t.tensor_type not in seen and t.data.size < 8_000_000:
            seen[t.tensor_type] = t
    assert {T.Q4_K, T.Q5_0, T.Q6_K, T.Q8_0, T.F32} <= set(seen)
    for kind, t in seen.items():
        expected = reference(t.data, kind).reshape(t.rows_cols)
        assert same_bits(dequantize(t.data, kind, t.rows_cols), expected), kind.name
