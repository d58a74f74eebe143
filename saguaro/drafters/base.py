"""What every drafter returns, and the interface SD (and SSD's backups) call.

A drafter proposes up to K tokens per sequence and says which q each was sampled from.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass

import torch

from saguaro.engine.sequence import Sequence


@dataclass
class DraftProposal:
    tokens: list[list[int]] | None  # per sequence, 0..K proposed tokens (s_1..s_k); None while
    # only `spec` holds them (verification fills it in with the same host copy as the outcomes)
    q: torch.Tensor | list[torch.Tensor | None] | None  # [B, K, vocab] float32 q each s_i was sampled
    # from, or one [K, vocab] (or None) per row; None means deterministic proposals (one-hot q)
    spec: torch.Tensor | None = None  # [B, K] int64 on the device: K tokens for every row

    def q_of(self, b: int) -> torch.Tensor | None:
        return None if self.q is None else self.q[b]

    def padded(self, device) -> tuple[torch.Tensor, list[int]]:
        """The speculations as [B, K_max] int64 on `device` (zero-padded) and their lengths."""
        if self.spec is not None:
            return self.spec.to(device), [self.spec.shape[1]] * self.spec.shape[0]
        lengths = [len(t) for t in self.tokens]
        width = max(lengths, default=0)
        rows = [t + [0] * (width - len(t)) for t in self.tokens]
        return torch.tensor(rows, dtype=torch.long, device=device).view(len(rows), width), lengths


class Drafter(ABC):
    @abstractmethod
    def propose(self, seqs: list[Sequence], k: int) -> DraftProposal:
        """Speculate up to k tokens after each sequence's trunk."""

    def open(self, max_rows: int, capacity: int) -> None:
        """Size per-engine state (a KV pool) once."""

    def join(self, seqs: list[Sequence]) -> None:
        """New sequences join after the current rows, in order."""

    def keep_rows(self, rows: list[int]) -> None:
        """Finished sequences leave; `rows` stay, in order."""

    def commit(self, kept: list[int]) -> None:
        """After verification: of each sequence, only the first kept[b] trunk tokens stay valid
        in any cache the drafter holds (the trunk minus its new last token)."""
