"""Autoregressive decoding: one target forward per token; the baseline every mode must match."""

from __future__ import annotations

from saguaro.engine.runner import ModelRunner
from saguaro.engine.sequence import Sequence
from saguaro.kv_cache import KVCache
from saguaro.strategies.base import Strategy, choose_tokens


class ARStrategy(Strategy):
    name = "ar"

    def __init__(self, target: ModelRunner):
        self.target = target

    def step(self, seqs: list[Sequence], cache: KVCache) -> list[list[int]]:
        logits = self.target.feed(cache, [[s.trunk[-1]] for s in seqs])  # [B, vocab]
        self.round_logits = logits.unsqueeze(1)
        return [[t] for t in choose_tokens(logits, seqs)]
