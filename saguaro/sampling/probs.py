"""Logits to the float32 distributions actually sampled from, and per-sequence sampling.

Verification must see exactly these distributions (p for the target, q or Saguaro's q' for the draft).
"""

from __future__ import annotations

import torch

from saguaro.errors import InvalidRequestError
from saguaro.sampling.params import SamplingParams
from saguaro.sampling.rows import RowSampling, draw, inverse_cdf  # noqa: F401  (inverse_cdf re-exported)


def logits_to_probs(logits: torch.Tensor, temperature: float, top_k: int = 0, top_p: float = 1.0) -> torch.Tensor:
    """Temperature, then top-k, then top-p, renormalised; float32 `[..., vocab]` for any leading shape.

    temperature 0 gives a one-hot at the argmax (first index on ties). top_k 0 or -1 disables top-k;
    boundary ties keep exactly k tokens. top-p keeps the smallest most-likely prefix whose
    cumulative probability reaches top_p, always at least one token. One setting for every row:
    the batched form with settings per row is RowSampling.probs.
    """
    params = SamplingParams(temperature=temperature, top_k=top_k, top_p=top_p)
    return RowSampling([params], [None], logits.device).probs(logits.unsqueeze(0))[0]


def probs_for_params(logits: torch.Tensor, params: SamplingParams) -> torch.Tensor:
    """`logits_to_probs` with one request's settings; `[..., vocab]` float32."""
    return logits_to_probs(logits, params.temperature, params.top_k, params.top_p)


def draw_uniforms(generators: list[torch.Generator], count: int, device: torch.device | str) -> torch.Tensor:
    """`count` uniforms per sequence, each row from that sequence's own generator (`draw`)."""
    rows = [draw(g, count, device) for g in generators]
    if not rows:
        return torch.empty(0, count, dtype=torch.float64, device=device)
    return torch.stack(rows)  # [batch, count]


def sample(probs: torch.Tensor, generators: list[torch.Generator]) -> torch.Tensor:
    """One token per row of `probs` `[batch, vocab]`, row b drawn with generators[b]; int64 `[batch]`.

    Each row uses only its own generator, so a seeded request reproduces regardless of its batch
    companions. One-hot rows (greedy) always return their argmax.
    """
    if probs.dim() != 2 or probs.shape[0] != len(generators):
        raise ValueError(f"probs must be [batch, vocab] with one generator per row, got {tuple(probs.shape)} "
                         f"and {len(generators)} generators")
    u = draw_uniforms(generators, 1, probs.device)[:, 0]  # [batch]
    return inverse_cdf(probs, u)


def apply_saguaro(q: torch.Tensor, fanout_top: int, c: float) -> torch.Tensor:
    """Saguaro sampling: scale q's top `fanout_top + 1` probabilities by c and renormalise.

    Moves residual mass onto the tokens the speculation cache guesses (the top F excluding the
    sampled one). Returns float32 `[..., vocab]`; c == 1 returns q unchanged.
    """
    if not (0 < c <= 1):
        raise InvalidRequestError(f"Saguaro factor c must be in (0, 1], got {c!r}")
    if fanout_top < 0:
        raise InvalidRequestError(f"fanout_top must be >= 0, got {fanout_top!r}")
    if c == 1:
        return q
    q = q.float()  # [..., vocab]
    top = min(fanout_top + 1, q.shape[-1])
    top_idx = q.topk(top, dim=-1).indices  # [..., top]
    scale = torch.ones_like(q).scatter_(-1, top_idx, c)
    scaled = q * scale
    return scaled / scaled.sum(dim=-1, keepdim=True)
