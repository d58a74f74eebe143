"""Sampling settings of a whole batch as tensors: one path for every row, greedy included.

Each row keeps its own temperature, top-k and top-p (tensors of shape [B]); a greedy row is
the one-hot case of the same path. Random numbers come from each row's own generator, so a
seeded request draws the same uniforms whatever its batch companions. Only which optional
steps run (any top-k? any top-p? any greedy row?) is decided on the host, from the settings,
never from tensor values, so nothing here waits for the device.
"""

from __future__ import annotations

import torch

from saguaro.sampling.params import SamplingParams

GREEDY_UNIFORM = 0.5  # any value in [0, 1) picks the argmax of a one-hot row


class RowSampling:
    def __init__(self, params: list[SamplingParams], generators: list[torch.Generator], device):
        self.params, self.generators = list(params), list(generators)
        self.device = torch.device(device)
        self.greedy_rows = [p.greedy for p in self.params]
        self.all_greedy = all(self.greedy_rows)
        self.any_greedy = any(self.greedy_rows)
        sampled = [p for p in self.params if not p.greedy]
        self.top_ks = [p.top_k if p.top_k > 0 and not p.greedy else 0 for p in self.params]
        self.any_top_p = any(p.top_p < 1 for p in sampled)
        # Greedy rows divide by 1 (their probabilities are replaced by the one-hot anyway).
        self.temperature = torch.tensor([1.0 if p.greedy else p.temperature for p in self.params],
                                        dtype=torch.float32, device=self.device)  # [B]
        self.top_p = torch.tensor([p.top_p for p in self.params], dtype=torch.float32, device=self.device)  # [B]
        self.greedy = torch.tensor(self.greedy_rows, dtype=torch.bool, device=self.device)  # [B]

    @classmethod
    def of(cls, seqs, device) -> "RowSampling":
        """The settings of a batch of engine sequences (anything with .params and .generator)."""
        return cls([s.params for s in seqs], [s.generator for s in seqs], device)

    def __len__(self) -> int:
        return len(self.params)

    def subset(self, rows: list[int]) -> "RowSampling":
        return RowSampling([self.params[b] for b in rows], [self.generators[b] for b in rows], self.device)

    # ---- distributions ----------------------------------------------------------------------------

    def probs(self, logits: torch.Tensor) -> torch.Tensor:
        """logits [B, ..., vocab] -> float32 distributions, row b with its own settings.

        Temperature, then top-k (exactly k tokens, ties included), then top-p (the smallest
        most-likely prefix reaching top_p, at least one token), renormalised; greedy rows are
        one-hot at the argmax (first index on ties).
        """
        logits = logits.float()
        if logits.shape[0] != len(self):
            raise ValueError(f"logits have {logits.shape[0]} rows for {len(self)} settings")
        vocab = logits.shape[-1]
        if self.all_greedy:
            return _one_hot_argmax(logits)
        shape = (-1,) + (1,) * (logits.dim() - 1)  # per-row values broadcast over the rest
        x = logits / self.temperature.view(shape)
        limits = [k if 0 < k < vocab else vocab for k in self.top_ks]
        kmax = max(k for k in limits if k < vocab) if any(k < vocab for k in limits) else 0
        if kmax:
            # Mask by index, not by value, so that ties at the k-th value cannot keep more than k.
            idx = x.topk(kmax, dim=-1).indices  # [..., kmax], largest first
            limit = torch.tensor(limits, device=x.device).view(shape)  # vocab = keep everything
            ranks = torch.arange(kmax, device=x.device)
            keep = torch.zeros_like(x, dtype=torch.bool).scatter_(-1, idx, (ranks < limit).expand_as(idx))
            x = x.masked_fill(~(keep | (limit >= vocab)), float("-inf"))
        probs = torch.softmax(x, dim=-1)
        if self.any_top_p:
            sorted_probs, order = probs.sort(dim=-1, descending=True, stable=True)
            # Mass strictly before each token: keep while it is still below top_p.
            before = sorted_probs.cumsum(dim=-1) - sorted_probs
            top_p = self.top_p.view(shape)
            keep = torch.zeros_like(before, dtype=torch.bool).scatter_(-1, order, before < top_p)
            probs = probs.masked_fill(~(keep | (top_p >= 1)), 0.0)
            probs = probs / probs.sum(dim=-1, keepdim=True)
        if self.any_greedy:
            probs = torch.where(self.greedy.view(shape), _one_hot_argmax(logits), probs)
        return probs

    # ---- randomness -------------------------------------------------------------------------------

    def uniforms(self, counts: list[int] | int, width: int | None = None) -> torch.Tensor:
        """float64 [B, width]: counts[b] uniforms from row b's own generator, then padding.

        Greedy rows draw nothing (their uniforms are GREEDY_UNIFORM), so a greedy request never
        advances its generator, as before. float64 resolves tiny probabilities in inverse_cdf.
        """
        counts = [counts] * len(self) if isinstance(counts, int) else list(counts)
        width = max(counts, default=0) if width is None else width
        rows = []
        for g, greedy, n in zip(self.generators, self.greedy_rows, counts):
            row = torch.full((width,), GREEDY_UNIFORM, dtype=torch.float64, device=self.device)
            if not greedy and n:
                row[:n] = draw(g, n, self.device)
            rows.append(row)
        if not rows:
            return torch.empty(0, width, dtype=torch.float64, device=self.device)
        return torch.stack(rows)

    def sample(self, probs: torch.Tensor) -> torch.Tensor:
        """One token per row of probs [B, vocab] (one uniform per sampled row); int64 [B]."""
        if self.all_greedy:
            return probs.argmax(dim=-1)
        return inverse_cdf(probs, self.uniforms(1)[:, 0])

    def choose(self, logits: torch.Tensor) -> torch.Tensor:
        """logits [B, vocab] -> one token per row with its own settings; int64 [B] on the device."""
        if self.all_greedy:
            return logits.argmax(dim=-1)
        return self.sample(self.probs(logits))


def _one_hot_argmax(logits: torch.Tensor) -> torch.Tensor:
    probs = torch.zeros_like(logits, dtype=torch.float32)
    return probs.scatter_(-1, logits.argmax(dim=-1, keepdim=True), 1.0)


def draw(generator: torch.Generator, count: int, device: torch.device | str) -> torch.Tensor:
    """`count` uniforms in [0, 1) from one sequence's generator, float64 [count] on `device`.

    float64 so that inverse-CDF sampling resolves tiny probabilities. The generator draws on its
    own device (a CPU generator serves CUDA rows too); the uniforms then move to `device`.
    """
    return torch.rand(count, generator=generator, device=generator.device, dtype=torch.float64).to(device)


def inverse_cdf(probs: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
    """Token per row such that P(token) = probs[row, token] / row sum, given uniforms u `[batch]`.

    Never returns a zero-probability token: rows need not be normalised, only non-negative with positive sum.
    """
    cdf = probs.double().cumsum(dim=-1)  # [batch, vocab]
    target = (u * cdf[:, -1]).unsqueeze(-1)  # [batch, 1]
    idx = torch.searchsorted(cdf, target, right=True).squeeze(-1)  # [batch]
    # Rounding can put target at the very top of the CDF; fall back to the last token with mass.
    vocab = probs.shape[-1]
    last_positive = (vocab - 1) - (probs > 0).flip(-1).int().argmax(dim=-1)  # [batch]
    return torch.minimum(idx, last_positive)
