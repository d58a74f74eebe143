"""Speculative decoding: the drafter proposes K tokens, the target verifies them in one forward.

The verification rule (saguaro.verify) keeps the output exactly distributed as AR sampling.
"""

from __future__ import annotations

import time

import torch

from saguaro.drafters.base import DraftProposal, Drafter
from saguaro.engine.runner import ModelRunner
from saguaro.engine.sequence import Sequence, group_rows
from saguaro.kv_cache import KVCache
from saguaro.metrics import SpeculationStats
from saguaro.sampling.probs import probs_for_params
from saguaro.strategies.base import Strategy
from saguaro.verify import one_hot_q, verify_greedy, verify_sampled


def verify_rows(logits: torch.Tensor, seqs: list[Sequence], proposal: DraftProposal) -> list[tuple[int, int]]:
    """logits [B, 1 + K, vocab] of the target over [last trunk token, s_1..s_K] per row (rows
    with shorter speculations padded). Returns each row's outcome (n, t) with one host sync.

    Rows are verified in groups, batched: every greedy row together (shorter speculations are
    masked by their length), and sampled rows by settings and speculation length, so that each
    row draws exactly len(spec) + 1 uniforms from its own generator, whatever its companions.
    """
    device = logits.device
    lengths = [len(t) for t in proposal.tokens]
    width = logits.shape[1] - 1
    spec = torch.tensor([t + [0] * (width - len(t)) for t in proposal.tokens], dtype=torch.long, device=device)
    accepted = torch.zeros(len(seqs), dtype=torch.long, device=device)
    token = torch.zeros(len(seqs), dtype=torch.long, device=device)
    # Greedy rows all together; sampled rows by settings and speculation length.
    keys = [(None, 0) if s.params.greedy else (s.params, n) for s, n in zip(seqs, lengths)]
    for (params, k), rows in group_rows(keys).items():
        index = torch.tensor(rows, device=device)
        if params is None:  # greedy
            spec_len = torch.tensor([lengths[b] for b in rows], device=device)
            v = verify_greedy(logits[index], spec[index], spec_len)
        else:
            p = probs_for_params(logits[index, : k + 1], params)  # [G, k + 1, vocab]
            q = torch.stack([_q_row(proposal, b, spec[b, :k], p.shape[-1]).to(device) for b in rows])
            v = verify_sampled(p, q, spec[index, :k], [seqs[b].generator for b in rows])
        accepted[index], token[index] = v.accepted, v.token
    return list(zip(accepted.tolist(), token.tolist()))


def _q_row(proposal: DraftProposal, b: int, spec: torch.Tensor, vocab: int) -> torch.Tensor:
    """[k, vocab]: the q row b's speculation was sampled from; one-hot for deterministic ones."""
    q = proposal.q_of(b)
    if q is None:
        return one_hot_q(spec, vocab)
    return q[: spec.shape[0]]


class SDStrategy(Strategy):
    name = "sd"

    def __init__(self, target: ModelRunner, drafter: Drafter, k: int):
        self.target, self.drafter, self.k = target, drafter, k
        self.extra_slots = k + 1

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
    outcomes = verify_rows(logits, seqs, proposal)
    for b, (s, (n, _)) in enumerate(zip(seqs, outcomes)):
        s.stats.record(len(proposal.tokens[b]), n)
        cache.truncate(b, old[b] + 1 + n)  # rejected tokens leave the target cache
    return outcomes
