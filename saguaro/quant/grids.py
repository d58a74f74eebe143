"""Weight grids: integer codes with scales per group of input columns.

An int4 grid means w = (q - 8) · scale + offset, the form PyTorch's int4 CPU kernel computes. It
is made from float weights (min-max per group), or read from a GGUF Q4_K tensor unchanged, so a
Q4_K_M file runs on its own grid instead of a re-rounded one. An int6 grid is a Q6_K tensor
unchanged: w = (q - 32) · scale, a scale per 16 columns.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import numpy as np
import torch

Q4_K_BYTES = 144  # fp16 d, fp16 dmin, 12 bytes of 6-bit sub-scales and mins, 128 bytes of codes
Q4_K_GROUP = 32  # weights per Q4_K sub-block: one scale and one min each
Q6_K_BYTES = 210  # 128 bytes of low 4 bits, 64 of high 2 bits, 16 int8 sub-scales, fp16 d
Q6_K_GROUP = 16  # weights per Q6_K sub-block: one scale each


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


@dataclass
class Int6Grid:
    q: torch.Tensor  # [out, in] uint8 codes in 0..63
    scale: torch.Tensor  # [out, in / 16] float32
    group: int = Q6_K_GROUP

    @property
    def shape(self) -> tuple[int, int]:
        return tuple(self.q.shape)

    def dequantize(self) -> torch.Tensor:
        """[out, in] float32: (q - 32) · scale."""
        return (self.q.float() - 32) * self.scale.repeat_interleave(self.group, dim=1)


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


def grid_from_q6_k(raw: np.ndarray, shape: tuple[int, int]) -> Int6Grid:
    """A Q6_K tensor's bytes ([out, in / 256 · 210] uint8) as its codes and sub-block scales."""
    out, inp = shape
    blocks = np.ascontiguousarray(raw).reshape(-1, Q6_K_BYTES)  # [blocks, 210]
    n = blocks.shape[0]
    # Each half of 128 weights: 64 bytes of low nibbles (weights 0-63 low, 64-127 high), 32 bytes
    # of high pairs (weights 0-31 at bits 0-1, 32-63 at 2-3, ...).
    low = blocks[:, :128].reshape(n, 2, 1, 64) >> np.array([0, 4], dtype=np.uint8).reshape(1, 1, 2, 1)
    high = blocks[:, 128:192].reshape(n, 2, 1, 32) >> np.array([0, 2, 4, 6], dtype=np.uint8).reshape(1, 1, 4, 1)
    codes = (low & 0x0F).reshape(n, 256) | ((high & 0x03).reshape(n, 256) << 4)
    sub = blocks[:, 192:208].view(np.int8).astype(np.float32)  # [blocks, 16]
    d = blocks[:, 208:210].view(np.float16).astype(np.float32)  # [blocks, 1]
    scale = torch.from_numpy((d * sub).reshape(out, inp // Q6_K_GROUP))
    return Int6Grid(torch.from_numpy(np.ascontiguousarray(codes).reshape(out, inp)), scale)


def _tensors(grid) -> dict[str, torch.Tensor]:
    return {f.name: getattr(grid, f.name) for f in dataclasses.fields(grid) if f.name != "group"}


def concat_grids(grids: list):
    """Stack grids of one kind along the output dimension (fused QKV, gate/up); groups must match."""
    if len({(type(g), g.group) for g in grids}) != 1:
        raise ValueError("cannot fuse grids of different kinds or group sizes")
    if len(grids) == 1:  # an unfused linear (o, down, the head): no copy of its codes at load
        return grids[0]
    parts = [_tensors(g) for g in grids]
    return dataclasses.replace(grids[0], **{k: torch.cat([p[k] for p in parts]) for k in parts[0]})


def map_rows(grid, fn):
    """The grid with fn applied to each tensor's rows (a subset, a permutation)."""
    return dataclasses.replace(grid, **{k: fn(t) for k, t in _tensors(grid).items()})
