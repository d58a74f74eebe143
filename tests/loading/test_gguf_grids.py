"""GGUF Q4_K and Q6_K blocks read as grids without re-rounding: gguf-py's values, and the codes and
scales of gguf-py's own bit unpacking, bit for bit."""

import numpy as np
import pytest
from gguf import GGMLQuantizationType
from gguf.quants import Q4_K, dequantize

from saguaro.loading import gguf_grids
from saguaro.loading.gguf_grids import Q4_K_BYTES, Q6_K_BYTES, grid_from_q4_k, grid_from_q6_k
from saguaro.loading.gguf_reader import GGUFFile


def random_q4_k_bytes(rows: int, cols: int, seed: int = 0) -> np.ndarray:
    """Valid Q4_K blocks: small positive fp16 d and dmin, random 6-bit scales and 4-bit codes."""
    rng = np.random.default_rng(seed)
    n = rows * cols // 256
    blocks = rng.integers(0, 256, size=(n, Q4_K_BYTES), dtype=np.uint8)
    blocks[:, 0:2] = rng.uniform(1e-4, 1e-2, size=(n, 1)).astype(np.float16).view(np.uint8)
    blocks[:, 2:4] = rng.uniform(1e-4, 1e-2, size=(n, 1)).astype(np.float16).view(np.uint8)
    return blocks.reshape(rows, -1)


def random_q6_k_bytes(rows: int, cols: int, seed: int = 0) -> np.ndarray:
    """Valid Q6_K blocks: random codes and int8 sub-scales, a small positive fp16 d."""
    rng = np.random.default_rng(seed)
    n = rows * cols // 256
    blocks = rng.integers(0, 256, size=(n, Q6_K_BYTES), dtype=np.uint8)
    blocks[:, 208:210] = rng.uniform(1e-4, 1e-2, size=(n, 1)).astype(np.float16).view(np.uint8)
    return blocks.reshape(rows, -1)


def test_q4_k_grid_is_the_files_own_values():
    raw = random_q4_k_bytes(32, 512)
    grid = grid_from_q4_k(raw, (32, 512))
    expected = dequantize(raw, GGMLQuantizationType.Q4_K).reshape(32, 512)
    assert grid.group == 32 and grid.q.max() <= 15
    np.testing.assert_allclose(grid.dequantize().numpy(), expected, rtol=1e-6, atol=1e-7)


def test_q6_k_grid_is_the_files_own_values():
    raw = random_q6_k_bytes(8, 768, seed=3)
    grid = grid_from_q6_k(raw, (8, 768))
    expected = dequantize(raw, GGMLQuantizationType.Q6_K).reshape(8, 768)
    assert grid.group == 16 and int(grid.q.max()) == 63 and int(grid.q.min()) == 0
    assert np.array_equal(grid.dequantize().numpy(), expected)


@pytest.mark.parametrize("kind", ["Q4_K", "Q6_K"])
def test_grids_of_a_real_tensor(qwen_gguf, kind):
    tensor = next(t for t in GGUFFile(qwen_gguf).tensors if t.tensor_type.name == kind)
    shape = tuple(int(d) for d in reversed(tensor.shape))
    grid = (grid_from_q4_k if kind == "Q4_K" else grid_from_q6_k)(tensor.data, shape)
    expected = dequantize(tensor.data, tensor.tensor_type).reshape(shape)
    assert np.array_equal(grid.dequantize().numpy(), expected)


def numpy_q4_k(raw: np.ndarray):
    """Codes, scales and mins of Q4_K blocks by gguf-py's own sub-scale unpacking, in numpy."""
    blocks = raw.reshape(-1, Q4_K_BYTES)
    d = blocks[:, 0:2].view(np.float16).astype(np.float32)
    dmin = blocks[:, 2:4].view(np.float16).astype(np.float32)
    sc, mn = Q4_K.get_scale_min(blocks[:, 4:16])
    codes = (blocks[:, 16:].reshape(-1, 4, 1, 32) >> np.array([0, 4], dtype=np.uint8).reshape(1, 1, 2, 1)) & 0x0F
    return codes.reshape(-1, 256), d * sc.astype(np.float32), dmin * mn.astype(np.float32)


def test_q4_k_codes_and_scales_are_gguf_pys_bits(monkeypatch):
    monkeypatch.setattr(gguf_grids, "CHUNK_BLOCKS", 3)  # the chunk loop must not drop or shift blocks
    raw = random_q4_k_bytes(16, 512, seed=5)
    grid = grid_from_q4_k(raw, (16, 512))
    codes, scale, low = numpy_q4_k(raw)
    assert np.array_equal(grid.q.numpy(), codes.reshape(16, 512))
    assert np.array_equal(grid.scale.numpy().view(np.int32), scale.reshape(16, 16).view(np.int32))
    assert np.array_equal(grid.offset.numpy(), (8 * scale - low).reshape(16, 16))


def test_q6_k_chunks_give_the_whole_tensors_grid(monkeypatch):
    raw = random_q6_k_bytes(6, 512, seed=7)
    whole = grid_from_q6_k(raw, (6, 512))
    monkeypatch.setattr(gguf_grids, "CHUNK_BLOCKS", 5)
    chunked = grid_from_q6_k(raw, (6, 512))
    assert np.array_equal(whole.q.numpy(), chunked.q.numpy())
    assert np.array_equal(whole.scale.numpy(), chunked.scale.numpy())
