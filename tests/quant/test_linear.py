"""The int4 and int8 kernels compute x·Wᵀ on their grids, and each row's result ignores the batch."""

import pytest
import torch

from saguaro.quant.grids import grid_from_float
from saguaro.quant.linear import Int4Linear, Int8Linear

G = torch.Generator().manual_seed(0)


@pytest.mark.parametrize("dtype, tol", [(torch.float32, 1e-4), (torch.bfloat16, 0.1)])
def test_int4_matches_its_dequantized_grid(dtype, tol):
    w, bias = torch.randn(40, 96, generator=G), torch.randn(40, generator=G)  # 40 rows: padded to 48
    grid = grid_from_float(w, 32)
    lin = Int4Linear(grid, dtype, bias)
    x = torch.randn(2, 3, 96, generator=G)
    y = lin(x.to(dtype)).float()
    assert y.shape == (2, 3, 40)
    torch.testing.assert_close(y, x @ grid.dequantize().t() + bias, atol=tol, rtol=tol)


@pytest.mark.parametrize("dtype, tol", [(torch.float32, 1e-4), (torch.bfloat16, 0.1)])
def test_int8_is_close_to_the_float_weight(dtype, tol):
    w = torch.randn(40, 96, generator=G)
    lin = Int8Linear(w, dtype)
    x = torch.randn(5, 96, generator=G)
    assert lin.weight.dtype == torch.int8
    step = w.abs().amax(1) / 127  # the per-channel rounding step
    err = (lin(x.to(dtype)).float() - x @ w.t()).abs()
    assert bool((err <= (x.abs().sum(1, keepdim=True) * step / 2) + tol).all())


@pytest.mark.parametrize("make", [lambda w, d: Int4Linear(grid_from_float(w, 32), d), Int8Linear])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_rows_do_not_depend_on_the_batch(make, dtype):
    """What keeps a K + 1 token verify equal to one-token decodes, bit for bit."""
    lin = make(torch.randn(64, 256, generator=G), dtype)
    x = torch.randn(9, 256, generator=G).to(dtype)
    full = lin(x)
    for m in (1, 2, 3, 5):
        assert torch.equal(lin(x[:m]), full[:m])
