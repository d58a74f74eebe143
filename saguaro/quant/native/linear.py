"""Linears on Saguaro's own kernels (qgemm.cpp): int4 or int8 codes in blocks of 32 columns.

Each block keeps an fp16 scale and min (int4: 5 bits a weight, int8: 9), and the activations
are rounded to int8 per row and block inside the kernel, so every block's dot product runs as
integer byte products. Both give each row the same result whatever the batch.
"""

from __future__ import annotations

import torch

from saguaro.quant.grids import Int4Grid
from saguaro.quant.linear import QuantLinear

BLOCK = 32  # columns sharing a scale and min
CHUNK = 16  # blocks the kernel interleaves and scales together (16 fp16 scales, then 16 mins)


def pack_scales(scale: torch.Tensor, low: torch.Tensor) -> torch.Tensor:
    """[out, blocks] scales and mins → [out, 2 · padded blocks] fp16, chunk by chunk: 16 scales
    then 16 mins, zero past the last block."""
    out, blocks = scale.shape
    pad = -blocks % CHUNK
    pair = torch.stack([scale, low], dim=1).to(torch.float16)  # [out, 2, blocks]
    pair = torch.nn.functional.pad(pair, (0, pad)).reshape(out, 2, -1, CHUNK)  # [out, 2, chunks, 16]
    return pair.transpose(1, 2).contiguous().reshape(out, -1)


def interleave(q: torch.Tensor, pad: int) -> torch.Tensor:
    """[out, in] byte codes → [out, chunks, 8, 16, 4], the kernel's order: per chunk of 16 blocks,
    vector i holds codes 4i..4i+3 of each block in turn. Blocks past the end hold `pad`."""
    out, inp = q.shape
    blocks = inp // BLOCK
    q = torch.nn.functional.pad(q, (0, (-blocks % CHUNK) * BLOCK), value=pad)
    return q.reshape(out, -1, CHUNK, BLOCK // 4, 4).transpose(2, 3)


def pack_nibbles(q: torch.Tensor) -> torch.Tensor:
    """[out, in] codes 0..15 → [out, padded in / 2] bytes: vectors 0-3 of each chunk in the low
    nibbles, vectors 4-7 in the high ones."""
    v = interleave(q.to(torch.uint8), 0)
    return (v[:, :, :4] | (v[:, :, 4:] << 4)).reshape(q.shape[0], -1).contiguous()


def int8_blocks(weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Symmetric int8 per block of 32: ([out, in] codes in -127..127, [out, in / 32] fp16 scales),
    the codes rounded against the fp16 scale the kernel multiplies by."""
    out, inp = weight.shape
    w = weight.float().reshape(out, inp // BLOCK, BLOCK)
    scale = (w.abs().amax(-1) / 127).to(torch.float16)  # an all-zero block: scale 0, codes 0
    step = torch.where(scale > 0, scale.float(), torch.ones_like(scale, dtype=torch.float32))
    q = torch.round(w / step.unsqueeze(-1)).clamp(-127, 127).to(torch.int8)
    return q.reshape(out, inp), scale


def supports(in_features: int) -> bool:
    """The kernel reads the input in whole blocks of 32 columns."""
    return in_features % BLOCK == 0


class NativeLinear(QuantLinear):
    """`weight` holds the codes; `scales` the packed fp16 scales and mins."""

    bits: int

    def __init__(self, codes: torch.Tensor, scales: torch.Tensor, bias: torch.Tensor | None, dtype: torch.dtype):
        super().__init__(codes, None if bias is None else bias.to(dtype))
        self.scales = scales

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        lead = x.shape[:-1]
        y = torch.ops.saguaro_qgemm.qgemm(x.reshape(-1, x.shape[-1]), self.weight, self.scales, self.bits)
        return self._bias(y.reshape(*lead, y.shape[-1]))


class NativeInt4Linear(NativeLinear):
    """An int4 grid as is: w = scale · q + (offset − 8 · scale), with scale and min in fp16."""

    bits = 4

    def __init__(self, grid: Int4Grid, dtype: torch.dtype, bias: torch.Tensor | None = None):
        if grid.group != BLOCK:
            raise ValueError(f"the native int4 kernel needs groups of {BLOCK}, not {grid.group}")
        scales = pack_scales(grid.scale, grid.offset - 8 * grid.scale)
        super().__init__(pack_nibbles(grid.q), scales, bias, dtype)


class NativeInt8Linear(NativeLinear):
    """Symmetric int8 per block of 32, stored as q + 128 with min −128 · scale."""

    bits = 8

    def __init__(self, weight: torch.Tensor, dtype: torch.dtype, bias: torch.Tensor | None = None):
        if not supports(weight.shape[1]):
            raise ValueError(f"the native int8 kernel needs inputs in multiples of {BLOCK}")
        q, scale = int8_blocks(weight)
        codes = interleave((q.to(torch.int16) + 128).to(torch.uint8), 128).reshape(q.shape[0], -1).contiguous()
        super().__init__(codes, pack_scales(scale, -128 * scale.float()), bias, dtype)
