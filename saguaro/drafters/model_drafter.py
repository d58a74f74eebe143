"""The draft-model drafter: samples K tokens one forward at a time from a small LM.

Its cache holds a valid prefix of each trunk; every proposal first feeds what the cache lacks.
"""

from __future__ import annotations

import torch

from saguaro.drafters.base import DraftProposal, Drafter
from saguaro.engine.runner import ModelRunner
from saguaro.engine.sequence import Sequence
from saguaro.kv_cache import KVCache
from saguaro.sampling.probs import probs_for_params, sample


def align_vocab(logits: torch.Tensor, vocab: int) -> torch.Tensor:
    """Draft logits [..., draft_vocab] -> [..., vocab]: extra target rows get zero probability."""
    have = logits.shape[-1]
    if have == vocab:
        return logits
    if have > vocab:
        return logits[..., :vocab]
    pad = logits.new_full((*logits.shape[:-1], vocab - have), float("-inf"))
    return torch.cat([logits, pad], dim=-1)


def draft_distributions(logits: torch.Tensor, seqs: list[Sequence], vocab: int) -> torch.Tensor:
    """[B, draft_vocab] logits -> [B, vocab] q with each sequence's own sampling settings."""
    logits = align_vocab(logits, vocab)
    return torch.cat([probs_for_params(logits[b : b + 1], s.params) for b, s in enumerate(seqs)])


def sample_rows(q: torch.Tensor, seqs: list[Sequence]) -> list[int]:
    if all(s.params.greedy for s in seqs):
        return q.argmax(dim=-1).tolist()
    return [int(sample(q[b : b + 1], [s.generator])[0]) for b, s in enumerate(seqs)]


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
        # Feed what the cache lacks of each trunk (at least the last token).
        logits = self.runner.feed(cache, [s.trunk[cache.lengths[b] :] for b, s in enumerate(seqs)])
        tokens: list[list[int]] = [[] for _ in seqs]
        qs = []
        for i in range(k):
            q = draft_distributions(logits, seqs, self.vocab)  # [B, vocab]
            qs.append(q)
            for b, t in enumerate(sample_rows(q, seqs)):
                tokens[b].append(t)
            if i + 1 < k:
                logits = self.runner.feed(cache, [[row[-1]] for row in tokens])
        return DraftProposal(tokens=tokens, q=torch.stack(qs, dim=1))  # q [B, K, vocab]

    def commit(self, kept: list[int]) -> None:
        # Cached speculation tokens past the accepted ones are no longer the trunk.
        for b, n in enumerate(kept):
            self.cache.truncate(b, min(self.cache.lengths[b], n))
