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
from saguaro.sampling.rows import RowSampling
from saguaro.strategies.base import Strategy
from saguaro.verify import one_hot_q, verify_greedy, verify_sampled


def verify_rows(logits: torch.Tensor, seqs: list[Sequence], proposal: DraftProposal, spec: torch.Tensor,
                lengths: list[int]) -> list[tuple[int, int]]:
    """logits [B, 1 + K, vocab] of the target over [last trunk token, s_1..s_K] per row (rows
    with shorter speculations padded). Returns each row's outcome (n, t) with one host sync,
    which also brings back speculations still on the device (filling proposal.tokens).

    Every row goes through one batched rule with its own settings (RowSampling): greedy rows are
    its one-hot case, and all-greedy batches take the argmax shortcut. Each sampled row draws
    exactly len(spec) + 1 uniforms from its own generator, whatever its companions.
    """
    device = logits.device
    width = spec.shape[1]  # spec [B, K] and lengths: proposal.padded(), as the verify forward fed them
    spec_len = torch.tensor(lengths, dtype=torch.long, device=device)
    rows = RowSampling.of(seqs, device)
    if rows.all_greedy:
        v = verify_greedy(logits, spec, spec_len)
    else:
        p = rows.probs(logits)  # [B, 1 + K, vocab]
        q = proposal_q(proposal, spec, p.shape[-1])  # [B, K, vocab]
        u = rows.uniforms([n + 1 for n in lengths], width + 1)  # [B, 1 + K]
        v = verify_sampled(p, q, spec, spec_len=spec_len, uniforms=u)
    packed = torch.cat([v.accepted.unsqueeze(1), v.token.unsqueeze(1), spec], dim=1).tolist()  # the sync
    if proposal.tokens is None:
        proposal.tokens = [row[2 : 2 + n] for row, n in zip(packed, lengths)]
    return [(row[0], row[1]) for row in packed]


def proposal_q(proposal: DraftProposal, spec: torch.Tensor, vocab: int) -> torch.Tensor:
    """[B, K, vocab]: the q each row's speculation was sampled from; one-hot for deterministic
    rows, zero past a row's own length (never read: those positions do not count)."""
    if isinstance(proposal.q, torch.Tensor) and proposal.q.shape == (*spec.shape, vocab):
        return proposal.q.to(spec.device)
    q = one_hot_q(spec, vocab)
    for b in range(spec.shape[0]):
        qb = proposal.q_of(b)
        if qb is not None:
            q[b, : qb.shape[0]] = qb[: spec.shape[1]].to(q.device)
    return q


class SDStrategy(Strategy):
    name = "sd"

    def __init__(self, target: ModelRunner, drafter: Drafter, k: int):
        self.target, self.drafter, self.k = target, drafter, k
        self.extra_slots = k + 1
        target.register_width(k + 1)  # the verify forward's own static width

    def open(self, max_rows: int, capacity: int) -> None:
        self.drafter.open(max_rows, capacity)

    def join(self, seqs: list[Sequence]) -> None:
        for s in seqs:
            s.stats = SpeculationStats()
        self.drafter.join(seqs)

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
        outcomes, self.round_logits = verify_batch(self.target, seqs, cache, proposal)
        self.drafter.commit([len(s.trunk) + n for s, (n, _) in zip(seqs, outcomes)])
        return [proposal.tokens[b][:n] + [t] for b, (n, t) in enumerate(outcomes)]


def verify_batch(target: ModelRunner, seqs: list[Sequence], cache: KVCache,
                 proposal: DraftProposal) -> tuple[list[tuple[int, int]], torch.Tensor]:
    """One target forward over [last trunk token, s_1..s_k] per row, then the exact rule.

    Returns each row's outcome (n, t) and the target's logits [B, 1 + K, vocab], and leaves the
    target cache holding trunk + s_1..s_n.
    """
    old = list(cache.lengths)
    spec, lengths = proposal.padded(target.device)  # [B, K]
    last = torch.tensor([[s.trunk[-1]] for s in seqs], dtype=torch.long, device=target.device)
    logits = target.feed_tokens(cache, torch.cat([last, spec], dim=1), [n + 1 for n in lengths], all_logits=True)
    outcomes = verify_rows(logits, seqs, proposal, spec, lengths)
    for b, (s, (n, _)) in enumerate(zip(seqs, outcomes)):
        s.stats.record(len(proposal.tokens[b]), n)
        cache.truncate(b, old[b] + 1 + n)  # rejected tokens leave the target cache
    return outcomes, logits
