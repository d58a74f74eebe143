"""The decoding strategy interface: chosen once when the LLM is built (AR, SD or SSD).

A strategy runs one round for a batch and says which tokens each sequence should commit.
"""

from __future__ import annotations

from abc import ABC, abstractmethod

import torch

from saguaro.engine.sequence import Sequence
from saguaro.kv_cache import KVCache
from saguaro.sampling.probs import probs_for_params, sample


class Strategy(ABC):
    name: str = ""
    extra_slots: int = 1  # cache slots needed past a sequence's final length

    def start(self, seqs: list[Sequence], capacity: int) -> None:
        """Prepare per-batch state (a draft cache, say) once the target's prefill is done."""

    @abstractmethod
    def step(self, seqs: list[Sequence], cache: KVCache) -> list[list[int]]:
        """One round. Leaves the target cache holding each trunk + returned tokens, minus the last."""

    def keep_rows(self, rows: list[int]) -> None:
        """Finished sequences leave the batch; `rows` are the indices that stay, in order."""

    def finish(self, seqs: list[Sequence]) -> None:
        """Called once the batch is done, to write the mode's figures into each sequence."""

    def close(self) -> None:
        """Release processes or devices the strategy holds."""


def choose_tokens(logits: torch.Tensor, seqs: list[Sequence]) -> list[int]:
    """logits [B, vocab] -> one token per sequence, sampled with its own settings and generator."""
    if all(s.params.greedy for s in seqs):
        return logits.argmax(dim=-1).tolist()
    out = []
    for b, s in enumerate(seqs):
        probs = probs_for_params(logits[b : b + 1], s.params)  # [1, vocab]
        out.append(int(sample(probs, [s.generator])[0]))
    return out
