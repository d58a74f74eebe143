"""Linears on Saguaro's own kernels (qgemm.cpp): int4, int6 or int8 codes in blocks of 32 columns.

Each block keeps an fp16 scale and min (int4: 5 bits a weight, int8: 9), or an fp16 scale per
half (int6, a GGUF Q6_K tensor: 7 bits), and the activations are rounded to int8 per row and
block inside the kernel, so every block's dot product runs as integer byte products. All give
each row the same result whatever the batch.
"""

from __future__ import annotations

import torch

from saguaro.quant.grids import Int4Grid, Int6Grid
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


def pack_six(q: torch.Tensor) -> torch.Tensor:
    """[out, in] codes 0..63 → [out, padded in · 3 / 4] bytes: per chunk, the low 4 bits as
    pack_nibbles lays them out (256 bytes), then two vectors of 2-bit pairs (128 bytes): pair r
    of byte b of vector h holds the top bits of byte b of code vector 4h + r."""
    q = q.to(torch.uint8)
    out = q.shape[0]
    nibbles = pack_nibbles(q & 0x0F).reshape(out, -1, 256)  # [out, chunks, 256]
    top = interleave(q >> 4, 0)  # [out, chunks, 8, 16, 4]
    top = top.reshape(out, top.shape[1], 2, 4, 64)  # [out, chunks, h, r, 64]
    pairs = top[:, :, :, 0] | (top[:, :, :, 1] << 2) | (top[:, :, :, 2] << 4) | (top[:, :, :, 3] << 6)
    return torch.cat([nibbles, pairs.reshape(out, -1, 128)], dim=2).reshape(out, -1).contiguous()


def int8_blocks(weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Symmetric int8 per block of 32: ([out, in] codes in -127..127, [out, in / 32] fp16 scales),
    the codes rounded against the fp16 scale the kernel multiplies by."""
    out, inp = weight.shape
    w = weight.float().reshape(out, inp // BLOCK, BLOCK)
    scale = (w.abs().amax(-1) / 127).to(torch.float16)  # an all-zero block: scale 0, codes 0
    step = torch.where(scale > 0, scale.float(), torch.ones_like(scale, dtype=torch.float32))
    q = torch.round(w / step.unsqueeze(-1)).clamp(-127, 127).to(torch.int8)
    return q.reshape(out, inp), scale


def fits_fp16(grid: Int6Grid) -> bool:
    """Whether the kernel's fp16 scales can hold the grid's."""
    return bool((grid.scale.abs() <= torch.finfo(torch.float16).max).all())


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


class NativeInt6Linear(NativeLinear):
    """An int6 grid (a Q6_K tensor) as is: w = scale · (q − 32), the scales of each block's two
    halves in fp16 where the file has fp16 · int8 (a relative rounding of at most 2⁻¹¹)."""

    bits = 6

    def __init__(self, grid: Int6Grid, dtype: torch.dtype, bias: torch.Tensor | None = None):
        if grid.group != BLOCK // 2 or not fits_fp16(grid):
            raise ValueError(f"the native int6 kernel needs groups of {BLOCK // 2} with scales inside fp16's range")
        super().__init__(pack_six(grid.q), pack_scales(grid.scale[:, 0::2], grid.scale[:, 1::2]), bias, dtype)


class NativeInt8Linear(NativeLinear):
    """Symmetric int8 per block of 32, stored as q + 128 with min −128 · scale."""

    bits = 8

    def __init__(self, weight: torch.Tensor, dtype: torch.dtype, bias: torch.Tensor | None = None):
        if not supports(weight.shape[1]):
            raise ValueError(f"the native int8 kernel needs inputs in multiples of {BLOCK}")
        q, scale = int8_blocks(weight)
        codes = interleave((q.to(torch.int16) + 128).to(torch.uint8), 128).reshape(q.shape[0], -1).contiguous()
        super().__init__(codes, pack_scales(scale, -128 * scale.float()), bias, dtype)
