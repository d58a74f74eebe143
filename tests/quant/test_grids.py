"""Grids: int4 min-max rounding from floats, and GGUF Q4_K and Q6_K bytes read without re-rounding."""

import numpy as np
import pytest
import torch

from saguaro.quant.grids import (Q4_K_BYTES, Q6_K_BYTES, concat_grids, grid_from_float, grid_from_q4_k,
                                 grid_from_q6_k, map_rows)


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
    from gguf import GGMLQuantizationType
    from gguf.quants import dequantize

    raw = random_q4_k_bytes(32, 512)
    grid = grid_from_q4_k(raw, (32, 512))
    expected = dequantize(raw, GGMLQuantizationType.Q4_K).reshape(32, 512)
    assert grid.group == 32 and grid.q.max() <= 15
    np.testing.assert_allclose(grid.dequantize().numpy(), expected, rtol=1e-6, atol=1e-7)


def test_q6_k_grid_is_the_files_own_values():
    from gguf import GGMLQuantizationType
    from gguf.quants import dequantize

    raw = random_q6_k_bytes(8, 768, seed=3)
    grid = grid_from_q6_k(raw, (8, 768))
    expected = dequantize(raw, GGMLQuantizationType.Q6_K).reshape(8, 768)
    assert grid.group == 16 and int(grid.q.max()) == 63 and int(grid.q.min()) == 0
    assert np.array_equal(grid.dequantize().numpy(), expected)


@pytest.mark.parametrize("kind", ["Q4_K", "Q6_K"])
def test_grids_of_a_real_tensor(qwen_gguf, kind):
    from gguf.quants import dequantize

    from saguaro.loading.gguf_reader import GGUFFile

    tensor = next(t for t in GGUFFile(qwen_gguf).tensors if t.tensor_type.name == kind)
    shape = tuple(int(d) for d in reversed(tensor.shape))
    grid = (grid_from_q4_k if kind == "Q4_K" else grid_from_q6_k)(tensor.data, shape)
    expected = dequantize(tensor.data, tensor.tensor_type).reshape(shape)
    assert np.array_equal(grid.dequantize().numpy(), expected)


@pytest.mark.parametrize("group", [32, 128])
def test_float_grid_rounds_to_the_nearest_level(group):
    w = torch.randn(24, 256, generator=torch.Generator().manual_seed(1))
    w[3, :group] = 0.5  # a constant group must not divide by zero
    grid = grid_from_float(w, group)
    err = (grid.dequantize() - w).abs()
    half_step = grid.scale.repeat_interleave(group, dim=1) / 2
    assert int(grid.q.max()) <= 15 and grid.q.dtype == torch.uint8
    assert bool((err <= half_step + 1e-6).all())
    assert torch.allclose(grid.dequantize()[3, :group], torch.full((group,), 0.5))


def test_concat_stacks_output_rows():
    a, b = grid_from_float(torch.randn(16, 64), 32), grid_from_float(torch.randn(32, 64), 32)
    both = concat_grids([a, b])
    assert both.shape == (48, 64)
    assert torch.equal(both.dequantize(), torch.cat([a.dequantize(), b.dequantize()]))
    with pytest.raises(ValueError):
        concat_grids([a, grid_from_float(torch.randn(16, 64), 64)])


def test_grids_of_other_kinds_do_not_fuse_and_rows_map_on_every_tensor():
    six = grid_from_q6_k(random_q6_k_bytes(4, 256), (4, 256))
    with pytest.raises(ValueError):
        concat_grids([six, grid_from_float(torch.randn(4, 256), 32)])
    assert concat_grids([six, six]).shape == (8, 256)
    rows = torch.tensor([3, 0])
    taken = map_rows(six, lambda t: t[rows])
    assert torch.equal(taken.dequantize(), six.dequantize()[rows])
