"""Outcome prediction: the (n, t) guesses the draft pre-drafts for while the target verifies.

A recovery token at n < K is never s_{n+1}, so those guesses skip it; n = K guesses the bonus token.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from saguaro.ssd.fanout import validate_fanout


def outcome_key(seq_id: int, n: int, t: int) -> tuple[int, int, int]:
    """Key of one speculation cache entry: sequence, accepted count n, recovery/bonus token t."""
    return (int(seq_id), int(n), int(t))


def predict_outcomes_batch(q: torch.Tensor, speculation: torch.Tensor, fanout: Sequence[int]) -> list[list[tuple[int, int]]]:
    """`predict_outcomes` for every sequence at once: q [batch, K + 1, vocab], speculation [batch, K]."""
    batch, k1, vocab = q.shape
    k = k1 - 1
    if speculation.shape != (batch, k):
        raise ValueError(f"speculation must be [batch, K] = {(batch, k)}, got {tuple(speculation.shape)}")
    validate_fanout(fanout, k)
    # The last position has no s_{K+1} to exclude, so it keeps vocab candidates, the others vocab - 1.
    for n, f in enumerate(fanout):
        if f > vocab - (1 if n < k else 0):
            raise ValueError(f"fan-out F_{n} = {f} asks for more guesses than the vocabulary allows ({vocab})")
    widest = max(fanout, default=0)
    if widest == 0:
        return [[] for _ in range(batch)]

    scores = q.float().clone()  # [batch, K + 1, vocab]
    # -inf rather than 0 so s_{n+1} ranks below tokens the draft gave zero probability too.
    scores[:, :k].scatter_(-1, speculation.to(scores.device, torch.long).unsqueeze(-1), float("-inf"))
    top = scores.topk(widest, dim=-1).indices.tolist()  # [batch, K + 1, widest], one device sync
    return [
        [(n, t) for n, f in enumerate(fanout) for t in top[b][n][:f]]
        for b in range(batch)
    ]


def predict_outcomes(q: torch.Tensor, speculation: torch.Tensor, fanout: Sequence[int]) -> list[tuple[int, int]]:
    """The outcome guesses for one sequence, in order n = 0..K, most likely first within each n.

    q: [K + 1, vocab] draft distributions, q[n] after s_1..s_n (q[K] from one extra draft step).
    speculation: [K] the tokens s_1..s_K being verified. fanout: F_0..F_K.
    For n < K the guesses are the top F_n tokens of q[n] other than s_{n+1}; for n = K the top
    F_K tokens of q[K]. Returns exactly sum(fanout) pairs (n, t).
    """
    return predict_outcomes_batch(q.unsqueeze(0), speculation.unsqueeze(0), fanout)[0]
