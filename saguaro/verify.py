"""Verification: which drafted tokens the target keeps, and the token it emits after them.

Words (ALGORITHM.md). Verification of a speculation s_1..s_K yields the *accepted count* n
(how many of s_1..s_K are kept, 0..K) and one more token t: the *recovery token* when n < K
(drawn in place of the rejected s_{n+1}) or the *bonus token* when n == K (drawn from p_K).
The pair (n, t) is the round's *outcome*; the round commits s_1..s_n followed by t.

Shorter speculations inside a batch are expressed with `spec_len`: for sequence b only
s_1..s_{spec_len[b]} count, and K above means spec_len[b]. spec_len 0 is a plain AR step.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from saguaro.sampling.probs import draw_uniforms, inverse_cdf


@dataclass
class Verification:
    """Outcome of verifying one speculation per sequence."""

    accepted: torch.Tensor  # [batch] int64, accepted count n in 0..spec_len[b]
    token: torch.Tensor  # [batch] int64, recovery token (n < spec_len) or bonus token (n == spec_len)
    speculation: torch.Tensor  # [batch, K] int64, the verified speculation

    def tokens_committed(self, b: int) -> list[int]:
        """The tokens sequence b appends to its trunk this round: s_1..s_n then t."""
        n = int(self.accepted[b])
        return self.speculation[b, :n].tolist() + [int(self.token[b])]


def one_hot_q(speculation: torch.Tensor, vocab: int) -> torch.Tensor:
    """The q of a deterministic proposal (n-gram, reused guess): all mass on the proposed token.

    Entries of speculation outside [0, vocab) (padding past spec_len) give an all-zero row.
    """
    q = torch.zeros(*speculation.shape, vocab, dtype=torch.float32, device=speculation.device)  # [batch, K, vocab]
    valid = (speculation >= 0) & (speculation < vocab)
    q.scatter_(-1, speculation.clamp(0, vocab - 1).unsqueeze(-1), valid.unsqueeze(-1).float())
    return q


def _check(p: torch.Tensor, speculation: torch.Tensor, spec_len: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
    """Validate shapes; return spec_len (filled in) and the [batch, K] mask of positions that count."""
    if p.dim() != 3 or speculation.dim() != 2:
        raise ValueError(f"p must be [batch, K + 1, vocab] and speculation [batch, K], "
                         f"got {tuple(p.shape)} and {tuple(speculation.shape)}")
    batch, k = speculation.shape
    if p.shape[:2] != (batch, k + 1):
        raise ValueError(f"p {tuple(p.shape)} does not match speculation {tuple(speculation.shape)}: need [batch, K + 1, vocab]")
    if spec_len is None:
        spec_len = torch.full((batch,), k, dtype=torch.long, device=speculation.device)  # [batch]
    elif spec_len.shape != (batch,) or (
        spec_len.device.type == "cpu" and bool(((spec_len < 0) | (spec_len > k)).any())  # no sync elsewhere
    ):
        raise ValueError(f"spec_len must be [batch] with values in 0..{k}, got {spec_len.tolist()}")
    positions = torch.arange(k, device=speculation.device)  # [K]
    return spec_len.long(), positions.unsqueeze(0) < spec_len.unsqueeze(1)  # [batch], [batch, K]


def _accepted_count(accept: torch.Tensor) -> torch.Tensor:
    """Length of the leading run of True per row: stop at the first rejection."""
    return accept.long().cumprod(dim=-1).sum(dim=-1)  # [batch]


def verify_greedy(p: torch.Tensor, speculation: torch.Tensor, spec_len: torch.Tensor | None = None) -> Verification:
    """Temperature-0 verification: accept while s_i == argmax p_{i-1}; t = argmax p_n.

    p: [batch, K + 1, vocab] target distributions (or logits; only the argmax is used).
    """
    spec_len, valid = _check(p, speculation, spec_len)
    best = p.argmax(dim=-1)  # [batch, K + 1]
    accept = (speculation == best[:, :-1]) & valid  # [batch, K]
    n = _accepted_count(accept)  # [batch]
    token = best.gather(1, n.unsqueeze(1)).squeeze(1)  # [batch]
    return Verification(accepted=n, token=token, speculation=speculation)


def verify_sampled(
    p: torch.Tensor,
    q: torch.Tensor,
    speculation: torch.Tensor,
    generators: list[torch.Generator] | None = None,
    spec_len: torch.Tensor | None = None,
    *,
    uniforms: torch.Tensor | None = None,
) -> Verification:
    """Exact speculative sampling: the committed tokens are distributed as AR sampling from p.

    p: [batch, K + 1, vocab] target distributions actually used, p[:, i] after s_1..s_i.
    q: [batch, K, vocab] draft distributions actually sampled from, q[:, i] produced s_{i+1}
       (one-hot for deterministic proposals, see `one_hot_q`).
    Accept s_i with probability min(1, p_{i-1}(s_i) / q_{i-1}(s_i)); recovery token from
    norm(max(0, p_n - q_n)) (p_n if that residual is all zero); bonus token from p_{spec_len}.
    Sequence b draws K + 1 uniforms from generators[b] whatever happens, so its random stream
    does not depend on its outcome or on other sequences. Or the caller passes them, `uniforms`
    [batch, K + 1] float64: row b's first spec_len[b] decide acceptance and the next one the
    token (so that a row draws exactly spec_len[b] + 1, see RowSampling.uniforms).
    """
    spec_len, valid = _check(p, speculation, spec_len)
    batch, k = speculation.shape
    vocab = p.shape[-1]
    if q.shape != (batch, k, vocab):
        raise ValueError(f"q must be [batch, K, vocab] = {(batch, k, vocab)}, got {tuple(q.shape)}")
    if uniforms is None:
        if generators is None or len(generators) != batch:
            raise ValueError(f"need one generator per sequence: {batch} sequences, "
                             f"{0 if generators is None else len(generators)} generators")
        uniforms = draw_uniforms(generators, k + 1, p.device)  # [batch, K + 1]
    elif uniforms.shape != (batch, k + 1):
        raise ValueError(f"uniforms must be [batch, K + 1] = {(batch, k + 1)}, got {tuple(uniforms.shape)}")
    p = p.float()
    q = q.float()
    u = uniforms
    # Padding past spec_len may hold any id; clamp so gather stays in range, `valid` drops it.
    spec = speculation.clamp(0, vocab - 1).unsqueeze(-1)  # [batch, K, 1]
    p_s = p[:, :k].gather(-1, spec).squeeze(-1).double()  # [batch, K]
    q_s = q.gather(-1, spec).squeeze(-1).double()  # [batch, K]
    # u < p/q written without the division: q_s == 0 (never sampled) then accepts iff p_s > 0.
    accept = (u[:, :k] * q_s < p_s) & valid  # [batch, K]
    n = _accepted_count(accept)  # [batch]

    p_n = p.gather(1, n.view(batch, 1, 1).expand(batch, 1, vocab)).squeeze(1)  # [batch, vocab]
    if k > 0:
        q_n = q.gather(1, n.clamp(max=k - 1).view(batch, 1, 1).expand(batch, 1, vocab)).squeeze(1)  # [batch, vocab]
        residual = (p_n - q_n).clamp_min(0.0)  # [batch, vocab]
        recovering = (n < spec_len).unsqueeze(1)  # [batch, 1]
        # p == q makes rejection impossible in exact arithmetic; if float noise rejected anyway, use p.
        empty = (residual.sum(dim=-1, keepdim=True) <= 0)  # [batch, 1]
        dist = torch.where(recovering & ~empty, residual, p_n)  # [batch, vocab]
    else:
        dist = p_n
    token = inverse_cdf(dist, u.gather(1, spec_len.unsqueeze(1)).squeeze(1))  # [batch]
    return Verification(accepted=n, token=token, speculation=speculation)
