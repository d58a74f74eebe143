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
ROWS = 16  # output rows the kernel interleaves: lane j of every 64-byte vector is row j


def nibbles(q: torch.Tensor) -> torch.Tensor:
    """[out, in] codes 0..15 → [out, blocks, 16] bytes: byte i of a block holds code i in its low
    nibble and code 16 + i in its high one. Done on 64-bit words, 8 codes at a time: a code is
    under 16, so shifting a word left by 4 moves each byte's code into its own high nibble."""
    words = q.to(torch.uint8).contiguous().view(torch.int64).reshape(-1, 2, BLOCK // 16)  # [blocks, half, word]
    return (words[:, 0] | (words[:, 1] << 4)).view(torch.uint8).reshape(q.shape[0], -1, BLOCK // 2)


def high_pairs(q: torch.Tensor) -> torch.Tensor:
    """[out, in] codes 0..63 → [out, blocks, 8] bytes of their top 2 bits: bits 2p..2p+1 of byte
    4h + r hold those of code 16h + 4p + r (the code vector 4h + p's byte r)."""
    top = (q.to(torch.uint8) >> 4).reshape(q.shape[0], -1, 2, 4, 4)  # [out, blocks, h, p, r]
    return (top[:, :, :, 0] | (top[:, :, :, 1] << 2) | (top[:, :, :, 2] << 4) | (top[:, :, :, 3] << 6)).flatten(2)


def _row_groups(per_row: torch.Tensor, groups: int) -> torch.Tensor:
    """[out, blocks, 4 · n] bytes of each row's blocks → a [groups, blocks, n, 16, 4] view (no
    copy): vector v of a group's block holds bytes 4v..4v+3 of each of its 16 rows in turn."""
    out, blocks, width = per_row.shape
    if out != groups * ROWS:  # zero rows pad the last group
        per_row = torch.nn.functional.pad(per_row, (0, 0, 0, 0, 0, groups * ROWS - out))
    return per_row.reshape(groups, ROWS, blocks, width // 4, 4).permute(0, 2, 3, 1, 4)


def pack(codes: list[torch.Tensor], scale: torch.Tensor, low: torch.Tensor) -> torch.Tensor:
    """Per-row code bytes ([out, blocks, ·] each, in order) and [out, blocks] scales and mins →
    the kernel's [groups, blocks · bytes]: per group and block, its code vectors, then 16 fp16
    scales and 16 fp16 mins. Each part is copied once, straight into its place."""
    out, blocks = scale.shape
    groups = -(-out // ROWS)
    widths = [c.shape[2] * ROWS for c in codes]
    packed = torch.empty(groups, blocks, sum(widths) + 4 * ROWS, dtype=torch.uint8)
    at = 0
    for part, width in zip(codes, widths):
        packed[:, :, at:at + width].view(groups, blocks, -1, ROWS, 4).copy_(_row_groups(part, groups))
        at += width
    pair = torch.stack([scale, low], dim=1).to(torch.float16)  # [out, 2, blocks]
    if out != groups * ROWS:
        pair = torch.nn.functional.pad(pair, (0, 0, 0, 0, 0, groups * ROWS - out))
    pairs = packed[:, :, at:].view(torch.float16).view(groups, blocks, 2, ROWS)
    pairs.copy_(pair.reshape(groups, ROWS, 2, blocks).permute(0, 3, 2, 1))
    return packed.reshape(groups, -1)


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
    """`weight` holds the packed codes, scales and mins of `out_features` rows."""

    bits: int

    def __init__(self, packed: torch.Tensor, out_features: int, bias: torch.Tensor | None, dtype: torch.dtype):
        super().__init__(packed, None if bias is None else bias.to(dtype))
        self.out_features = out_features

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        lead = x.shape[:-1]
        y = torch.ops.saguaro_qgemm.qgemm(x.reshape(-1, x.shape[-1]), self.weight, self.bits, self.out_features)
        return self._bias(y.reshape(*lead, y.shape[-1]))


class NativeInt4Linear(NativeLinear):
    """An int4 grid as is: w = scale · q + (offset − 8 · scale), with scale and min in fp16."""

    bits = 4

    def __init__(self, grid: Int4Grid, dtype: torch.dtype, bias: torch.Tensor | None = None):
        if grid.group != BLOCK:
            raise ValueError(f"the native int4 kernel needs groups of {BLOCK}, not {grid.group}")
        packed = pack([nibbles(grid.q)], grid.scale, grid.offset - 8 * grid.scale)
        super().__init__(packed, grid.shape[0], bias, dtype)


class NativeInt6Linear(NativeLinear):
    """An int6 grid (a Q6_K tensor) as is: w = scale · (q − 32), the scales of each block's two
    halves in fp16 where the file has fp16 · int8 (a relative rounding of at most 2⁻¹¹)."""

    bits = 6

    def __init__(self, grid: Int6Grid, dtype: torch.dtype, bias: torch.Tensor | None = None):
        if grid.group != BLOCK // 2 or not fits_fp16(grid):
            raise ValueError(f"the native int6 kernel needs groups of {BLOCK // 2} with scales inside fp16's range")
        packed = pack([nibbles(grid.q & 0x0F), high_pairs(grid.q)], grid.scale[:, 0::2], grid.scale[:, 1::2])
        super().__init__(packed, grid.shape[0], bias, dtype)


class NativeInt8Linear(NativeLinear):
    """Symmetric int8 per block of 32, stored as q + 128 with min −128 · scale."""

    bits = 8

    def __init__(self, weight: torch.Tensor, dtype: torch.dtype, bias: torch.Tensor | None = None):
        if not supports(weight.shape[1]):
            raise ValueError(f"the native int8 kernel needs inputs in multiples of {BLOCK}")
        q, scale = int8_blocks(weight)
        codes = (q.to(torch.int16) + 128).to(torch.uint8).reshape(q.shape[0], -1, BLOCK)
        super().__init__(pack([codes], scale, -128 * scale.float()), q.shape[0], bias, dtype)
