"""The roofline counts every byte a decode step streams: weights, and quantized kernels' scales."""

import torch

from saguaro.bench.roofline import linear_bytes
from saguaro.model.decoder import Linear
from saguaro.quant.grids import grid_from_float
from saguaro.quant.linear import Int4Linear, Int8Linear
from saguaro.quant.native.linear import NativeInt4Linear


def test_linear_bytes_count_weights_and_scales():
    w = torch.randn(64, 512)
    assert linear_bytes(Linear(w.bfloat16())) == 64 * 512 * 2
    assert linear_bytes(Int8Linear(w, torch.bfloat16)) == 64 * 512 + 64 * 2  # codes, one bf16 scale a row
    assert linear_bytes(Int4Linear(grid_from_float(w, 32), torch.bfloat16)) == 64 * 512 // 2 + 16 * 64 * 2 * 2
    # 16 blocks of 32 a row: 4-bit codes, an fp16 scale and min per block
    assert linear_bytes(NativeInt4Linear(grid_from_float(w, 32), torch.bfloat16)) == 64 * 512 // 2 + 64 * 16 * 2 * 2
