"""The decoding strategy interface: chosen once when the LLM is built (AR, SD or SSD).

A strategy runs one round for a batch and says which tokens each sequence should commit.
"""

from __future__ import annotations

from abc import ABC, abstractmethod

import torch

from saguaro.engine.sequence import Sequence
from saguaro.kv_cache import KVCache
from saguaro.sampling.rows import RowSampling


class Strategy(ABC):
    """Sequences join and leave between rounds. The running sequences are always rows 0..B-1 of
    the target's cache, in order; strategy state per sequence (a draft cache, the SSD worker's
    rows) follows the same order."""

    name: str = ""
    extra_slots: int = 1  # cache slots needed past a sequence's final length
    # After `step`: the target's float32 logits [B, W, vocab] of the round, where [b, j] is the
    # distribution the j-th token committed for row b was drawn from (for reporting logprobs).
    round_logits: torch.Tensor | None = None

    def open(self, max_rows: int, capacity: int) -> None:
        """Size per-engine state (a draft KV pool, say) once; called again only to grow it."""

    def join(self, seqs: list[Sequence]) -> None:
        """New sequences (target prefill done) join after the current rows, in order."""

    @abstractmethod
    def step(self, seqs: list[Sequence], cache: KVCache) -> list[list[int]]:
        """One round. Leaves the target cache holding each trunk + returned tokens, minus the last."""

    def keep_rows(self, rows: list[int]) -> None:
        """Finished or aborted sequences leave; `rows` are the indices that stay, in order."""

    def finish(self, seq: Sequence) -> None:
        """Called once a sequence is done, to write the mode's figures into it."""

    def close(self) -> None:
        """Release processes or devices the strategy holds."""


def choose_tokens(logits: torch.Tensor, seqs: list[Sequence]) -> list[int]:
    """logits [B, vocab] -> one token per sequence, sampled with its own settings and generator.

    One batched path for every row (greedy rows are its one-hot case); one host sync."""
    return RowSampling.of(seqs, logits.device).choose(logits).tolist()
