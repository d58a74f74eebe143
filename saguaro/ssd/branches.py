"""The draft side of SSD: just-in-time drafting, the glue forward, and all branches at once.

While the target verifies speculation S, `draft_branches` predicts the likely outcomes (n, t)
of that verification and drafts the next speculation for each, filling the speculation cache.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
import torch

from saguaro.drafters.model_drafter import align_vocab
from saguaro.engine.runner import ModelRunner
from saguaro.engine.sequence import group_rows
from saguaro.sampling.params import SamplingParams
from saguaro.sampling.probs import apply_saguaro
from saguaro.sampling.rows import RowSampling, inverse_cdf
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

    def _q(self, logits: torch.Tensor, rows: RowSampling, fan: int) -> torch.Tensor:
        """[R, ..., draft_vocab] logits -> the q each row actually samples from: its own
        settings, Saguaro-scaled when c < 1 (greedy rows stay one-hot)."""
        q = rows.probs(align_vocab(logits, self.vocab))
        if self.c == 1 or rows.all_greedy:
            return q
        scaled = apply_saguaro(q, fan, self.c)
        if not rows.any_greedy:
            return scaled
        return torch.where(rows.greedy.view((-1,) + (1,) * (q.dim() - 1)), q, scaled)

    # ---- drafting -------------------------------------------------------------------------------

    def jit(self, rows: list[int], k: int, fanout: list[int]) -> dict[int, CacheEntry]:
        """Neural backup: draft k tokens from each listed row's trunk, one batched forward per
        token; the drafted tokens stay on the device until the end (one host sync)."""
        cache = self.cache
        for b in rows:
            cache.truncate(b, min(cache.lengths[b], len(self.seqs[b].trunk) - 1))
        feed = [s.trunk[cache.lengths[b]:] if b in rows else [] for b, s in enumerate(self.seqs)]
        settings = RowSampling.of([self.seqs[b] for b in rows], self.runner.device)
        index = torch.tensor(rows, device=self.runner.device)
        counts = [1 if b in rows else 0 for b in range(len(self.seqs))]
        picks, qs = [], []
        logits = self.runner.feed(cache, feed)  # [B, vocab]
        for i in range(k):
            q = self._q(logits[index], settings, fanout[min(i, len(fanout) - 1)])  # [R, vocab]
            picks.append(settings.sample(q))  # [R]
            qs.append(q)
            if i + 1 < k:
                tokens = torch.zeros(len(self.seqs), 1, dtype=torch.long, device=index.device)
                logits = self.runner.feed_tokens(cache, tokens.index_copy(0, index, picks[-1].unsqueeze(1)), counts)
        drafted = torch.stack(picks, dim=1).tolist() if picks else [[] for _ in rows]
        return {
            b: CacheEntry(drafted[i], None if self.seqs[b].params.greedy else torch.stack([q[i] for q in qs]))
            for i, b in enumerate(rows)
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
        logits = align_vocab(logits, self.vocab)
        rows = RowSampling.of(self.seqs, logits.device)
        if not rows.any_greedy:
            return rows.probs(logits)
        plain = torch.softmax(logits.float(), dim=-1)
        return plain if rows.all_greedy else torch.where(rows.greedy.view(-1, 1, 1), plain, rows.probs(logits))

    def draft_branches(self, k: int, fanout: list[int]) -> dict:
        """Glue, predict outcomes, then k batched branch steps; returns timing figures."""
        t0 = time.perf_counter()
        q_glue = self.glue()
        t1 = time.perf_counter()
        # One batched prediction (one host sync) per speculation length.
        for kb, rows in group_rows(len(s.speculation) for s in self.seqs).items():
            # F_0..F_{kb-1}, then the bonus fan-out F_K; a speculation drafted under a longer K
            # (the plan just changed) takes F_K for its extra positions too.
            fan = [fanout[min(i, len(fanout) - 1)] for i in range(kb)] + [fanout[-1]]
            spec = torch.tensor([self.seqs[b].speculation for b in rows], dtype=torch.long).view(len(rows), kb)
            index = torch.tensor(rows, device=q_glue.device)
            for b, g in zip(rows, predict_outcomes_batch(q_glue[index, : kb + 1], spec, fan)):
                self.seqs[b].guesses = g
        guesses = [s.guesses for s in self.seqs]
        width = max(len(g) for g in guesses)
        if width == 0:  # the plan's fan-outs give no row a guess (F_K = 0, no speculation)
            return {"glue_s": t1 - t0, "branch_s": 0.0}
        # Pads are scratch, never stored; a row without guesses (its fan-outs are all 0) is all pads.
        padded = [g + [g[0] if g else (0, 0)] * (width - len(g)) for g in guesses]
        tokens = torch.tensor([[t for _, t in g] for g in padded])  # [B, NB]
        settings = RowSampling.of(self.seqs, self.runner.device)
        picked, qs = [], []
        for depth in range(k):
            logits = self._branch_forward(tokens, padded, depth)  # [B, NB, draft_vocab]
            if settings.all_greedy:
                tokens = align_vocab(logits, self.vocab).argmax(dim=-1)  # [B, NB]
            else:
                q = self._q(logits, settings, fanout[min(depth, len(fanout) - 1)])  # [B, NB, vocab]
                u = settings.uniforms(width)  # [B, NB]: each row's own generator
                tokens = inverse_cdf(q.flatten(0, 1), u.flatten()).view(q.shape[:2])
                qs.append(q)
            picked.append(tokens)
        drafted = torch.stack(picked, dim=2).tolist()  # [B, NB, k]: one host sync for all depths
        for b, s in enumerate(self.seqs):
            for j, (n, t) in enumerate(s.guesses):
                q = None if s.params.greedy else torch.stack([qd[b, j] for qd in qs])
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
