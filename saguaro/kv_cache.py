"""Per-layer key/value storage for a batch of sequences, with plain-Python length bookkeeping.

Slots are written explicitly, so several tokens can be appended at once, a sequence can be
truncated (rollback of rejected tokens), and scratch tokens (SSD branches) can live past the end.
"""

from __future__ import annotations

import torch

from saguaro.model.config import ModelConfig


class KVCache:
    def __init__(self, cfg: ModelConfig, batch: int, capacity: int, device, dtype):
        shape = (batch, cfg.num_kv_heads, capacity, cfg.head_dim)
        self.k = [torch.zeros(shape, device=device, dtype=dtype) for _ in range(cfg.num_layers)]
        self.v = [torch.zeros(shape, device=device, dtype=dtype) for _ in range(cfg.num_layers)]
        self.capacity = capacity
        self.lengths = [0] * batch  # committed tokens per sequence

    @property
    def batch(self) -> int:
        return len(self.lengths)

    def check_room(self, needed: int) -> None:
        if needed > self.capacity:
            raise RuntimeError(f"KV cache overflow: {needed} slots needed, capacity {self.capacity}")

    def write(self, layer: int, slots: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> None:
        """slots [B, T]; k, v [B, kv_heads, T, head_dim]."""
        rows = torch.arange(slots.shape[0], device=slots.device).unsqueeze(1)  # [B, 1]
        # Advanced indices around a slice put the indexed dims first: [B, T, kv_heads, head_dim].
        self.k[layer][rows, :, slots] = k.transpose(1, 2)
        self.v[layer][rows, :, slots] = v.transpose(1, 2)

    def view(self, layer: int, kv_len: int) -> tuple[torch.Tensor, torch.Tensor]:
        """[B, kv_heads, kv_len, head_dim] each."""
        return self.k[layer][:, :, :kv_len], self.v[layer][:, :, :kv_len]

    def truncate(self, seq: int, length: int) -> None:
        """Forget everything of `seq` past `length` (slots beyond are simply overwritten later)."""
        if not 0 <= length <= self.lengths[seq]:
            raise ValueError(f"cannot truncate sequence {seq} of length {self.lengths[seq]} to {length}")
        self.lengths[seq] = length

    def advance(self, seq: int, n: int) -> None:
        self.check_room(self.lengths[seq] + n)
        self.lengths[seq] += n

    def keep_rows(self, rows: list[int]) -> None:
        """Drop finished sequences from the batch, keeping `rows` in order."""
        index = torch.tensor(rows, dtype=torch.long, device=self.k[0].device)
        self.k = [t.index_select(0, index) for t in self.k]
        self.v = [t.index_select(0, index) for t in self.v]
        self.lengths = [self.lengths[r] for r in rows]
