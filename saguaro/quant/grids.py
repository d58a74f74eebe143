"""Weight grids: integer codes with scales per group of input columns.

An int4 grid means w = (q - 8) · scale + offset, the form PyTorch's int4 CPU kernel computes. It
is made from float weights (min-max per group), or read from a GGUF Q4_K tensor unchanged
(saguaro.loading.gguf_grids), so a Q4_K_M file runs on its own grid instead of a re-rounded one.
An int6 grid is a Q6_K tensor unchanged: w = (q - 32) · scale, a scale per 16 columns.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch

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
