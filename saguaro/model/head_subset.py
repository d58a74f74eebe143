"""Optional transform for a draft: an LM head over a subset of the vocabulary.

The head is a large share of a small draft's weights (a quarter of Qwen2.5-0.5B's); keeping the
most frequent tokens only makes every draft step cheaper. Tokens outside get logit -inf, so
q = 0 there, and verification (which uses the q actually sampled) stays exact.
"""

from __future__ import annotations

import torch

from saguaro.model.decoder import Decoder, Linear


class SubsetHead(Linear):
    def __init__(self, head: Linear, keep: torch.Tensor, vocab: int):
        self.bias = None
        self.keep = keep  # [len(keep)] token ids
        self.vocab = vocab
        self.inner = Linear(head.weight[keep].contiguous())  # [len(keep), hidden]; transforms may replace it

    @property
    def weight(self) -> torch.Tensor:
        """The kept rows as the inner linear holds them (a transform may have packed them)."""
        return self.inner.weight

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        sub = self.inner(x)  # [..., len(keep)]
        out = sub.new_full((*sub.shape[:-1], self.vocab), float("-inf"))  # [..., vocab]
        out[..., self.keep] = sub
        return out


# On CPU a draft's whole head (151,936 tokens for Qwen2.5) is a quarter of its bytes. With the
# 32,768 first tokens the bundled draft steps 16% faster on one core, and SSD's budget affords
# K = 2 with 3 branches instead of K = 1 with 4: SSD 22.9 -> 27.7 tok/s, SD 31.9 -> 34.3 (DESIGN.md).
CPU_DRAFT_HEAD_TOKENS = 32_768


def draft_head_tokens(requested: int | None, device) -> int | None:
    """The tokens a draft's head keeps (None: all). `requested` None is the default: 32,768 on
    CPU, the whole head elsewhere; 0 asks for the whole head."""
    if requested is None:
        return CPU_DRAFT_HEAD_TOKENS if torch.device(device).type == "cpu" else None
    return requested or None


def frequent_tokens(vocab: int, count: int, always: set[int]) -> torch.Tensor:
    """The first `count` ids plus `always` (special tokens). Byte-level BPE ids follow merge order,
    which follows corpus frequency, so low ids are the frequent tokens."""
    ids = set(range(min(count, vocab))) | {t for t in always if 0 <= t < vocab}
    return torch.tensor(sorted(ids), dtype=torch.long)


def restrict_head(decoder: Decoder, keep: torch.Tensor) -> Decoder:
    decoder.lm_head = SubsetHead(decoder.lm_head, keep.to(decoder.device), decoder.cfg.vocab_size)
    return decoder
