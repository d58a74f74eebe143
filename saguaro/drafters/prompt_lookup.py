"""The n-gram (prompt lookup) drafter: proposes what followed the trunk's last n-gram before.

Its proposals are deterministic, so verification treats q as one-hot at each proposed token.
"""

from __future__ import annotations

from saguaro.drafters.base import DraftProposal, Drafter
from saguaro.drafters.ngram import ngram_propose
from saguaro.engine.sequence import Sequence


class NgramDrafter(Drafter):
    def __init__(self, max_ngram: int = 3, min_ngram: int = 1):
        self.max_ngram, self.min_ngram = max_ngram, min_ngram

    def propose(self, seqs: list[Sequence], k: int) -> DraftProposal:
        tokens = [ngram_propose(s.trunk, k, self.max_ngram, self.min_ngram) for s in seqs]
        return DraftProposal(tokens=tokens, q=None)
