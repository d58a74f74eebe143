"""Log-probabilities of the tokens a round committed, under the target's raw distribution.

Every committed token, drafted or not, was drawn (or verified) against a target distribution
the round already computed: AR's logits, or verification's logits at the token's position. So
the figures are the target's own under SD and SSD too, exactly as AR would report them.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class TokenLogprob:
    token_id: int
    logprob: float
    top: list[tuple[int, float]]  # the most likely tokens with their logprobs, most likely first


def round_logprobs(logits: torch.Tensor, taken: list[list[int]], tops: list[int]) -> list[list[TokenLogprob]]:
    """logits [R, W, vocab]: row r's position j is the distribution of its j-th token `taken[r][j]`;
    tops[r] alternatives per token. Raw log-softmax (no temperature, top-k or top-p); one
    device-to-host copy for all rows."""
    width = max((len(t) for t in taken), default=0)
    if width == 0:
        return [[] for _ in taken]
    logp = torch.log_softmax(logits[:, :width].float(), dim=-1)  # [R, width, vocab]
    ids = torch.tensor([t + [0] * (width - len(t)) for t in taken], device=logits.device)  # [R, width]
    parts = [logp.gather(-1, ids.unsqueeze(-1)).double()]  # [R, width, 1]
    k = max(tops)
    if k:
        values, indices = logp.topk(k, dim=-1)  # [R, width, k]
        parts += [values.double(), indices.double()]  # ids < 2**53 are exact in float64
    packed = torch.cat(parts, dim=-1).tolist()  # the one copy
    out = []
    for row, t, n_top in zip(packed, taken, tops):
        out.append([TokenLogprob(token, pos[0], [(int(i), v) for v, i in zip(pos[1 : 1 + n_top], pos[1 + k : 1 + k + n_top])])
                    for token, pos in zip(t, row)])
    return out
