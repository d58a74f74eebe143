"""The decoding strategy interface: chosen once when the LLM is built (AR, SD or SSD).

A strategy runs one round for a batch and says which tokens each sequence should commit.
"""

from __future__ import annotations

from abc import ABC, abstractmethod

import torch

from saguaro.engine.sequence import Sequence, group_rows
from saguaro.kv_cache import KVCache
from saguaro.sampling.probs import probs_for_params, sample


class Strategy(ABC):
    """Sequences join and leave between rounds. The running sequences are always rows 0..B-1 of
    the target's cache, in order; strategy state per sequence (a draft cache, the SSD worker's
    rows) follows the same order."""

    name: str = ""
    extra_slots: int = 1  # cache slots needed past a sequence's final length

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

    Rows sharing settings are sampled together; one host sync for the whole batch."""
    tokens = logits.argmax(dim=-1)  # [B]; greedy rows keep these
    for params, rows in group_rows(None if s.params.greedy else s.params for s in seqs).items():
        if params is None:
            continue
        index = torch.tensor(rows, device=logits.device)
        probs = probs_for_params(logits[index], params)  # [G, vocab]
        tokens[index] = sample(probs, [seqs[b].generator for b in rows])
    return tokens.tolist()
