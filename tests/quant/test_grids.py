"""Grids: int4 min-max rounding from floats, fused and row-mapped grids (GGUF grids: tests/loading)."""

import pytest
import torch

from saguaro.quant.grids import Int6Grid, concat_grids, grid_from_float, map_rows


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
    gen = torch.Generator().manual_seed(2)
    six = Int6Grid(torch.randint(0, 64, (4, 256), dtype=torch.uint8, generator=gen), torch.rand(4, 16, generator=gen))
    with pytest.raises(ValueError):
        concat_grids([six, grid_from_float(torch.randn(4, 256), 32)])
    assert concat_grids([six, six]).shape == (8, 256)
    rows = torch.tensor([3, 0])
    taken = map_rows(six, lambda t: t[rows])
    assert torch.equal(taken.dequantize(), six.dequantize()[rows])
