"""The speculation cache: pre-drafted speculations keyed by (sequence, n, t).

Each entry keeps its tokens and the q distributions they were sampled from (needed to verify
exactly at temperature > 0).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class CacheEntry:
    tokens: list[int]  # d_1..d_depth, the next speculation if the outcome is (n, t)
    q: torch.Tensor | None  # [depth, vocab] float32 q each token was sampled from; None when greedy


class SpeculationCache:
    def __init__(self) -> None:
        self._entries: dict[tuple[int, int, int], CacheEntry] = {}

    def put(self, seq: int, n: int, t: int, entry: CacheEntry) -> None:
        if entry.tokens:  # a branch that never got a token is no speculation at all
            self._entries[(seq, n, t)] = entry

    def lookup(self, seq: int, n: int, t: int) -> CacheEntry | None:
        return self._entries.get((seq, n, t))

    def clear(self, seq: int | None = None) -> None:
        if seq is None:
            self._entries.clear()
        else:
            self._entries = {k: v for k, v in self._entries.items() if k[0] != seq}

    def __len__(self) -> int:
        return len(self._entries)
