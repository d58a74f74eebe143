"""Int4 weight grids: 4-bit codes with a scale and an offset per group of input columns.

A grid means w = (q - 8) · scale + offset, the form PyTorch's int4 CPU kernel computes. It is
made from float weights (min-max per group), or read from a GGUF Q4_K tensor unchanged, so a
Q4_K_M file runs on its own grid instead of a re-rounded one.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

Q4_K_BYTES = 144  # fp16 d, fp16 dmin, 12 bytes of 6-bit sub-scales and mins, 128 bytes of codes
Q4_K_GROUP = 32  # weights per Q4_K sub-block: one scale and one min each


@dataclass
class Int4Grid:
    q: torch.Tensor  # [out, in] uint8 codes in 0..15
    scale: torch.Tensor  # [out, in / group] float32
    offset: torch.Tensor  # [out, in / group] float32
    group: int

    @property
    def shape(self) -> tuple[int, int]:
        return tuple(self.q.shape)

    def dequantize(self) -> torch.Tensor:
        """[out, in] float32, exactly what the kernel multiplies by (before any dtype rounding)."""
        s = self.scale.repeat_interleave(self.group, dim=1)
        z = self.offset.repeat_interleave(self.group, dim=1)
        return (self.q.float() - 8) * s + z


def grid_from_float(w: torch.Tensor, group: int) -> Int4Grid:
    """Asymmetric min-max rounding per group of `group` input columns."""
    out, inp = w.shape
    g = w.float().reshape(out, inp // group, group)
    lo, hi = g.amin(-1), g.amax(-1)  # [out, in / group]
    scale = ((hi - lo) / 15).clamp_min(1e-12)
    q = torch.round((g - lo.unsqueeze(-1)) / scale.unsqueeze(-1)).clamp(0, 15)
    return Int4Grid(q.reshape(out, inp).to(torch.uint8), scale, lo + 8 * scale, group)


def grid_from_q4_k(raw: np.ndarray, shape: tuple[int, int]) -> Int4Grid:
    """A Q4_K tensor's bytes ([out, in / 256 · 144] uint8) as a group-32 grid, without rounding."""
    from gguf.quants import Q4_K

    out, inp = shape
    blocks = np.ascontiguousarray(raw).reshape(-1, Q4_K_BYTES)  # [out · in / 256, 144]
    d = blocks[:, 0:2].view(np.float16).astype(np.float32)  # [blocks, 1]
    dmin = blocks[:, 2:4].view(np.float16).astype(np.float32)
    sc, mn = Q4_K.get_scale_min(blocks[:, 4:16])  # [blocks, 8] each, 6-bit integers
    scale = d * sc.astype(np.float32)  # [blocks, 8]
    low = dmin * mn.astype(np.float32)  # w = scale · q - low
    codes = blocks[:, 16:].reshape(-1, 4, 1, 32) >> np.array([0, 4], dtype=np.uint8).reshape(1, 1, 2, 1)
    codes = (codes & 0x0F).reshape(out, inp)  # pairs of sub-blocks share bytes: low nibbles first
    groups = inp // Q4_K_GROUP
    scale = torch.from_numpy(scale.reshape(out, groups))
    low = torch.from_numpy(low.reshape(out, groups))
    return Int4Grid(torch.from_numpy(codes), scale, 8 * scale - low, Q4_K_GROUP)


def concat_grids(grids: list[Int4Grid]) -> Int4Grid:
    """Stack grids along the output dimension (fused QKV, gate/up); groups must match."""
    if len({g.group for g in grids}) != 1:
        raise ValueError("cannot fuse int4 grids with different group sizes")
    return Int4Grid(torch.cat([g.q for g in grids]), torch.cat([g.scale for g in grids]),
                    torch.cat([g.offset for g in grids]), grids[0].group)
