"""Weight-only quantized linears on PyTorch's CPU kernels (int4 grouped, int8 per channel).

Activations stay in the model dtype (float32 or bfloat16); weights are unpacked inside the
kernel. Both kernels give each row the same result whatever the batch, so a K + 1 token verify
sees the logits a one-token decode would.
"""

from __future__ import annotations

import torch

from saguaro.model.decoder import Linear
from saguaro.quant.grids import Int4Grid

ROWS = 16  # the int4 kernel packs output rows in tiles of 16


def pad_rows(grid: Int4Grid, extra: int) -> Int4Grid:
    """Zero rows (code 8, scale 0, offset 0) so the output count fits the kernel's tiles."""
    if not extra:
        return grid
    groups = grid.scale.shape[1]
    return Int4Grid(torch.cat([grid.q, grid.q.new_full((extra, grid.q.shape[1]), 8)]),
                    torch.cat([grid.scale, grid.scale.new_zeros(extra, groups)]),
                    torch.cat([grid.offset, grid.offset.new_zeros(extra, groups)]), grid.group)


class QuantLinear(Linear):
    """`weight` holds the kernel's packed codes, not a float matrix."""

    def _bias(self, y: torch.Tensor) -> torch.Tensor:
        return y if self.bias is None else y + self.bias


class Int4Linear(QuantLinear):
    def __init__(self, grid: Int4Grid, dtype: torch.dtype, bias: torch.Tensor | None = None):
        out, inp = grid.shape
        grid = pad_rows(grid, -out % ROWS)
        # [in / group, out, 2]: the kernel's scale-and-offset layout, in the activation dtype
        pairs = torch.stack([grid.scale.t(), grid.offset.t()], dim=-1).to(dtype).contiguous()
        packed = torch.ops.aten._convert_weight_to_int4pack_for_cpu(grid.q.to(torch.int32).contiguous(), 1)
        super().__init__(packed, None if bias is None else bias.to(dtype))
        self.pairs, self.group, self.out_features = pairs, grid.group, out

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        lead = x.shape[:-1]
        y = torch.ops.aten._weight_int4pack_mm_for_cpu(x.reshape(-1, x.shape[-1]), self.weight, self.group, self.pairs)
        return self._bias(y[:, :self.out_features].reshape(*lead, self.out_features))


class Int8Linear(QuantLinear):
    """Symmetric per-output-channel int8: w ≈ q · scale, q in -127..127."""

    def __init__(self, weight: torch.Tensor, dtype: torch.dtype, bias: torch.Tensor | None = None):
        w = weight.float()
        scale = (w.abs().amax(dim=1) / 127).clamp_min(1e-12)  # [out]
        q = torch.round(w / scale.unsqueeze(1)).clamp(-127, 127).to(torch.int8)  # [out, in]
        super().__init__(q, None if bias is None else bias.to(dtype))
        self.scale = scale.to(dtype)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        lead = x.shape[:-1]
        y = torch.ops.aten._weight_int8pack_mm(x.reshape(-1, x.shape[-1]), self.weight, self.scale)
        return self._bias(y.reshape(*lead, self.weight.shape[0]))
