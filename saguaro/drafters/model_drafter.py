"""The draft-model drafter: samples K tokens one forward at a time from a small LM.

Its cache holds a valid prefix of each trunk; every proposal first feeds what the cache lacks.
"""

from __future__ import annotations

import torch

from saguaro.drafters.base import DraftProposal, Drafter
from saguaro.engine.runner import ModelRunner
from saguaro.engine.sequence import Sequence
from saguaro.kv_cache import KVCache
from saguaro.sampling.rows import RowSampling


def align_vocab(logits: torch.Tensor, vocab: int) -> torch.Tensor:
    """Draft logits [..., draft_vocab] -> [..., vocab]: extra target rows get zero probability."""
    have = logits.shape[-1]
    if have == vocab:
        return logits
    if have > vocab:
        return logits[..., :vocab]
    pad = logits.new_full((*logits.shape[:-1], vocab - have), float("-inf"))
    return torch.cat([logits, pad], dim=-1)


class ModelDrafter(Drafter):
    def __init__(self, runner: ModelRunner, target_vocab: int):
        self.runner = runner
        self.vocab = target_vocab
        self.cache: KVCache | None = None

    def open(self, max_rows: int, capacity: int) -> None:
        self.cache = self.runner.new_cache(0, capacity, max_rows)

    def join(self, seqs: list[Sequence]) -> None:
        self.runner.prefill(self.cache.add_rows(len(seqs)), [s.trunk[:-1] for s in seqs])

    def keep_rows(self, rows: list[int]) -> None:
        self.cache.keep_rows(rows)

    def propose(self, seqs: list[Sequence], k: int) -> DraftProposal:
        cache = self.cache
        rows = RowSampling.of(seqs, self.runner.device)
        # Feed what the cache lacks of each trunk (at least the last token).
        logits = self.runner.feed(cache, [s.trunk[cache.lengths[b] :] for b, s in enumerate(seqs)])
        picks, qs = [], []
        for i in range(k):
            q = rows.probs(align_vocab(logits, self.vocab))  # [B, vocab]
            picks.append(rows.sample(q))  # [B], stays on the device
            qs.append(q)
            if i + 1 < k:
                logits = self.runner.feed_tokens(cache, picks[-1].unsqueeze(1))
        if not picks:
            return DraftProposal(tokens=[[] for _ in seqs], q=None)
        # The tokens stay on the device: verification reads them back with its outcomes.
        return DraftProposal(tokens=None, q=torch.stack(qs, dim=1), spec=torch.stack(picks, dim=1))  # q [B, K, vocab]

    def commit(self, kept: list[int]) -> None:
        # Cached speculation tokens past the accepted ones are no longer the trunk.
        for b, n in enumerate(kept):
            self.cache.truncate(b, min(self.cache.lengths[b], n))
