"""The draft side of SSD: just-in-time drafting, the glue forward, and all branches at once.

While the target verifies speculation S, `draft_branches` predicts the likely outcomes (n, t)
of that verification and drafts the next speculation for each, filling the speculation cache.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
import torch

from saguaro.drafters.model_drafter import align_vocab, sample_rows
from saguaro.engine.runner import ModelRunner
from saguaro.engine.sequence import group_rows
from saguaro.sampling.params import SamplingParams
from saguaro.sampling.probs import apply_saguaro, probs_for_params, sample
from saguaro.ssd.masks import branch_mask, branch_positions, branch_slots
from saguaro.ssd.outcomes import predict_outcomes_batch
from saguaro.ssd.spec_cache import CacheEntry, SpeculationCache


@dataclass
class DraftSequence:
    """The worker's view of one sequence."""

    key: int
    trunk: list[int]
    params: SamplingParams
    generator: torch.Generator
    speculation: list[int] = field(default_factory=list)  # S, being verified by the target now
    guesses: list[tuple[int, int]] = field(default_factory=list)  # outcomes drafted for S


class BranchDrafter:
    def __init__(self, runner: ModelRunner, vocab: int, saguaro_c: float = 1.0):
        self.runner = runner
        self.vocab = vocab  # the target's vocabulary size
        self.c = saguaro_c
        self.seqs: list[DraftSequence] = []
        self.cache = None
        self.spec_cache = SpeculationCache()

    def start(self, seqs: list[DraftSequence], capacity: int, max_rows: int | None = None) -> None:
        """A new session: the KV pool is kept from the last one when it is large enough."""
        max_rows = max(len(seqs), max_rows or 0)
        self.seqs = []
        self.spec_cache.clear()
        if self.cache is None or self.cache.capacity < capacity or self.cache.max_rows < max_rows:
            self.cache = self.runner.new_cache(0, capacity, max_rows)
        self.cache.keep_rows([])
        self.add(seqs)

    def add(self, seqs: list[DraftSequence], whole: bool = False) -> None:
        """Sequences join after the current rows, their trunks prefilled minus the last token, or
        `whole` when the token after the trunk is known already (the first outcome of a row that
        joins a running session), so that the cache again lacks just the trunk's last token."""
        self.seqs += seqs
        self.runner.prefill(self.cache.add_rows(len(seqs)), [s.trunk if whole else s.trunk[:-1] for s in seqs])

    def keep_rows(self, rows: list[int]) -> None:
        for b in set(range(len(self.seqs))) - set(rows):
            self.spec_cache.clear(self.seqs[b].key)
        self.seqs = [self.seqs[b] for b in rows]
        self.cache.keep_rows(rows)

    # ---- distributions ------------------------------------------------------------------------

    def _q(self, logits: torch.Tensor, s: DraftSequence, fan: int) -> torch.Tensor:
        """[..., draft_vocab] logits -> the q actually sampled from (Saguaro-scaled when c < 1)."""
        q = probs_for_params(align_vocab(logits, self.vocab), s.params)
        return q if s.params.greedy else apply_saguaro(q, fan, self.c)

    # ---- drafting -------------------------------------------------------------------------------

    def jit(self, rows: list[int], k: int, fanout: list[int]) -> dict[int, CacheEntry]:
        """Neural backup: draft k tokens from each listed row's trunk, one forward per token."""
        cache = self.cache
        for b in rows:
            cache.truncate(b, min(cache.lengths[b], len(self.seqs[b].trunk) - 1))
        feed = [s.trunk[cache.lengths[b]:] if b in rows else [] for b, s in enumerate(self.seqs)]
        tokens: dict[int, list[int]] = {b: [] for b in rows}
        qs: dict[int, list[torch.Tensor]] = {b: [] for b in rows}
        for i in range(k):
            logits = self.runner.feed(cache, feed)  # [B, vocab]
            for b in rows:
                s = self.seqs[b]
                q = self._q(logits[b : b + 1], s, fanout[min(i, len(fanout) - 1)])  # [1, vocab]
                t = sample_rows(q, [s])[0]
                tokens[b].append(t)
                qs[b].append(q[0])
            feed = [[tokens[b][-1]] if b in rows else [] for b in range(len(self.seqs))]
        return {
            b: CacheEntry(tokens[b], None if self.seqs[b].params.greedy else torch.stack(qs[b]))
            for b in rows
        }

    def glue(self) -> torch.Tensor:
        """Feed [last trunk token, s_1..s_K] per row; returns q_0..q_K [B, K_max + 1, vocab].

        These rank the outcome guesses. Greedy rows get the draft's plain softmax: their sampling
        q is one-hot, which would leave nothing to rank below s_{n+1}. Rows with shorter
        speculations have garbage past their own K + 1 positions.
        """
        cache = self.cache
        for b, s in enumerate(self.seqs):
            cache.truncate(b, len(s.trunk) - 1)
        rows = [[s.trunk[-1]] + s.speculation for s in self.seqs]
        logits = self.runner.feed(cache, rows, all_logits=True)  # [B, K_max + 1, vocab]
        return torch.stack([_ranking(align_vocab(logits[b], self.vocab), s.params) for b, s in enumerate(self.seqs)])

    def draft_branches(self, k: int, fanout: list[int]) -> dict:
        """Glue, predict outcomes, then k batched branch steps; returns timing figures."""
        t0 = time.perf_counter()
        q_glue = self.glue()
        t1 = time.perf_counter()
        # One batched prediction (one host sync) per speculation length.
        for kb, rows in group_rows(len(s.speculation) for s in self.seqs).items():
            fan = fanout[:kb] + [fanout[-1]]  # F_0..F_{kb-1}, then the bonus fan-out F_K
            spec = torch.tensor([self.seqs[b].speculation for b in rows], dtype=torch.long).view(len(rows), kb)
            index = torch.tensor(rows, device=q_glue.device)
            for b, g in zip(rows, predict_outcomes_batch(q_glue[index, : kb + 1], spec, fan)):
                self.seqs[b].guesses = g
        guesses = [s.guesses for s in self.seqs]
        width = max(len(g) for g in guesses)
        padded = [g + [g[0]] * (width - len(g)) for g in guesses]  # pads are scratch, never stored
        tokens = torch.tensor([[t for _, t in g] for g in padded])  # [B, NB]
        drafted = [[[] for _ in range(width)] for _ in self.seqs]
        qs = [[[] for _ in range(width)] for _ in self.seqs]
        for depth in range(k):
            logits = self._branch_forward(tokens, padded, depth)  # [B, NB, draft_vocab]
            picks = align_vocab(logits, self.vocab).argmax(dim=-1)  # [B, NB]: greedy rows keep these
            for b, s in enumerate(self.seqs):
                if s.params.greedy:
                    continue
                q = self._q(logits[b], s, fanout[min(depth, len(fanout) - 1)])  # [NB, vocab]
                picks[b] = sample(q, [s.generator] * width)
                for j in range(width):
                    qs[b][j].append(q[j])
            for b, row in enumerate(picks.tolist()):  # one host sync per depth
                for j, t in enumerate(row):
                    drafted[b][j].append(t)
            tokens = picks
        for b, s in enumerate(self.seqs):
            for j, (n, t) in enumerate(s.guesses):
                q = torch.stack(qs[b][j]) if qs[b][j] else None
                self.spec_cache.put(s.key, n, t, CacheEntry(drafted[b][j], q))
        return {"glue_s": t1 - t0, "branch_s": time.perf_counter() - t1}

    def _branch_forward(self, tokens: torch.Tensor, guesses: list[list[tuple[int, int]]], depth: int):
        width = tokens.shape[1]
        kv_len = max(len(s.trunk) + len(s.speculation) + (depth + 1) * width for s in self.seqs)
        pos, slots, masks = [], [], []
        for b, s in enumerate(self.seqs):
            trunk, kb = len(s.trunk), len(s.speculation)
            accepted = [n for n, _ in guesses[b]]
            pos.append(branch_positions(trunk, accepted, depth))
            slots.append(branch_slots(trunk, kb, width, depth))
            masks.append(branch_mask(trunk, kb, accepted, depth, kv_len))
        return self.runner.forward_at(self.cache, tokens, torch.stack(pos), torch.stack(slots), torch.stack(masks))

    # ---- outcomes ---------------------------------------------------------------------------------

    def take(self, b: int, n: int, t: int) -> CacheEntry | None:
        """The real outcome of row b arrived: advance its trunk and look the next speculation up."""
        s = self.seqs[b]
        hit = self.spec_cache.lookup(s.key, n, t)
        self.spec_cache.clear(s.key)
        s.trunk = s.trunk + s.speculation[:n] + [t]
        self.cache.truncate(b, min(self.cache.lengths[b], len(s.trunk) - 1))
        s.speculation = []
        return hit


def _ranking(logits: torch.Tensor, params: SamplingParams) -> torch.Tensor:
    """The distribution outcome prediction ranks by: q itself, or for greedy rows the draft's softmax."""
    return torch.softmax(logits.float(), dim=-1) if params.greedy else probs_for_params(logits, params)
