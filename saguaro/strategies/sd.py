"""Speculative decoding: the drafter proposes K tokens, the target verifies them in one forward.

The verification rule (saguaro.verify) keeps the output exactly distributed as AR sampling.
"""

from __future__ import annotations

import time

import torch

from saguaro.drafters.base import DraftProposal, Drafter
from saguaro.engine.runner import ModelRunner
from saguaro.engine.sequence import Sequence
from saguaro.kv_cache import KVCache
from saguaro.metrics import SpeculationStats
from saguaro.sampling.probs import probs_for_params
from saguaro.strategies.base import Strategy
from saguaro.verify import one_hot_q, verify_greedy, verify_sampled


def verify_row(logits: torch.Tensor, seq: Sequence, spec: list[int], q: torch.Tensor | None) -> tuple[int, int]:
    """logits [K + 1, vocab] of the target over [last trunk token, s_1..s_K]; q [K, vocab] or None.

    Returns the outcome (n, t) for one sequence.
    """
    k = len(spec)
    speculation = torch.tensor([spec], dtype=torch.long, device=logits.device)  # [1, K]
    if seq.params.greedy:
        v = verify_greedy(logits[None, : k + 1], speculation)
    else:
        p = probs_for_params(logits[None, : k + 1], seq.params)  # [1, K + 1, vocab]
        q1 = one_hot_q(speculation, p.shape[-1]) if q is None else q[None, :k].to(p.device)  # SSD's q comes on CPU
        v = verify_sampled(p, q1, speculation, [seq.generator])
    return int(v.accepted[0]), int(v.token[0])


class SDStrategy(Strategy):
    name = "sd"

    def __init__(self, target: ModelRunner, drafter: Drafter, k: int):
        self.target, self.drafter, self.k = target, drafter, k
        self.extra_slots = k + 1

    def start(self, seqs: list[Sequence], capacity: int) -> None:
        self.drafter.start(seqs, capacity)
        for s in seqs:
            s.stats = SpeculationStats()

    def keep_rows(self, rows: list[int]) -> None:
        self.drafter.keep_rows(rows)

    def step(self, seqs: list[Sequence], cache: KVCache) -> list[list[int]]:
        t0 = time.perf_counter()
        # Always K: a batch-dependent K would change how each sequence consumes its seeded
        # generator, and a seed must reproduce its output whatever its batch companions.
        proposal = self.drafter.propose(seqs, self.k)
        t1 = time.perf_counter()
        out = self.verify(seqs, cache, proposal)
        t2 = time.perf_counter()
        for s in seqs:
            s.stats.draft_s += t1 - t0
            s.stats.verify_s += t2 - t1
        return out

    def verify(self, seqs: list[Sequence], cache: KVCache, proposal: DraftProposal) -> list[list[int]]:
        outcomes = verify_batch(self.target, seqs, cache, proposal)
        self.drafter.commit([len(s.trunk) + n for s, (n, _) in zip(seqs, outcomes)])
        return [proposal.tokens[b][:n] + [t] for b, (n, t) in enumerate(outcomes)]


def verify_batch(target: ModelRunner, seqs: list[Sequence], cache: KVCache, proposal: DraftProposal) -> list[tuple[int, int]]:
    """One target forward over [last trunk token, s_1..s_k] per row, then the exact rule.

    Returns each row's outcome (n, t) and leaves the target cache holding trunk + s_1..s_n.
    """
    old = list(cache.lengths)
    rows = [[s.trunk[-1]] + proposal.tokens[b] for b, s in enumerate(seqs)]
    logits = target.feed(cache, rows, all_logits=True)  # [B, 1 + K, vocab]
    outcomes = []
    for b, s in enumerate(seqs):
        spec = proposal.tokens[b]
        n, t = verify_row(logits[b], s, spec, proposal.q_of(b))
        s.stats.record(len(spec), n)
        cache.truncate(b, old[b] + 1 + n)  # rejected tokens leave the target cache
        outcomes.append((n, t))
    return outcomes
