"""What a draft's precision costs in acceptance: each draft precision against the target, teacher-forced.

Both models read the same held-out text, so at every position they see the same prefix. Greedy
acceptance is how often the draft's top token is the target's; sampled acceptance (temperature 1)
is Σ_x min(p(x), q(x)), the probability that verification accepts a token drawn from the draft's q.
"""

from __future__ import annotations

import logging

import torch

from saguaro.bench.quality import chunk_logits

log = logging.getLogger(__name__)


def acceptance(p_logits: torch.Tensor, q_logits: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Target logits p and draft logits q, [n, vocab] each: (top-1 match [n] bool, Σ min(p, q) [n]).
    Tokens past the shorter vocabulary have probability 0 for the model that lacks them."""
    vocab = min(p_logits.shape[-1], q_logits.shape[-1])
    p = torch.softmax(p_logits.float(), -1)[:, :vocab]  # [n, vocab]
    q = torch.softmax(q_logits.float(), -1)[:, :vocab]
    return p_logits.argmax(-1) == q_logits.argmax(-1), torch.minimum(p, q).sum(-1)


def draft_rows(target, drafts, ids: list[int]) -> list[dict]:
    """`target`: a decoder; `drafts`: (precision, load) pairs, `load()` giving a draft's decoder.
    One row per draft: its greedy and sampled acceptance over the positions of `ids`."""
    reference = [logits for _, logits in chunk_logits(target, ids)]  # [CHUNK, vocab] each
    rows = []
    for precision, load in drafts:
        draft = load()
        tops, overlaps = [], []
        for (_, q), p in zip(chunk_logits(draft, ids, draft=True), reference):
            top, overlap = acceptance(p, q)
            tops.append(top)
            overlaps.append(overlap)
        del draft
        top, overlap = torch.cat(tops), torch.cat(overlaps)
        rows.append({"precision": precision, "tokens": len(top), "greedy_acceptance": float(top.float().mean()),
                     "sampled_acceptance": float(overlap.mean())})
        log.info("draft %s: %s", precision, rows[-1])
    return rows


def table(rows: list[dict]) -> list[str]:
    lines = [f"{'draft precision':18} {'greedy acceptance':>20} {'T = 1 acceptance':>17}"]
    lines += [f"{r['precision']:18} {r['greedy_acceptance']:20.4f} {r['sampled_acceptance']:17.4f}" for r in rows]
    return lines
