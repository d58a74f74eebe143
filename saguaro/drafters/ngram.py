"""Prompt-lookup (n-gram) proposals: the cheap, model-free backup drafter.

Its proposals are deterministic, so verification treats them as a one-hot q (see saguaro.verify.one_hot_q).
"""

from __future__ import annotations

from collections.abc import Sequence


def _latest_match(tokens: list[int], n: int) -> int | None:
    """Start of the most recent earlier occurrence of the last n tokens, excluding the suffix itself."""
    length = len(tokens)
    pattern = tokens[length - n:]
    first = pattern[0]
    # Newest first: recent context predicts the continuation best.
    for start in range(length - n - 1, -1, -1):
        if tokens[start] == first and tokens[start:start + n] == pattern:
            return start
    return None


def ngram_propose(tokens: Sequence[int], k: int, max_ngram: int = 3, min_ngram: int = 1) -> list[int]:
    """Up to k tokens that followed the latest earlier occurrence of the trunk's last n tokens.

    Tries n = max_ngram down to min_ngram and uses the first n that matches; returns [] when
    nothing matches (the caller then takes a plain AR step).
    """
    if k < 0:
        raise ValueError(f"k must be >= 0, got {k}")
    if not 1 <= min_ngram <= max_ngram:
        raise ValueError(f"need 1 <= min_ngram <= max_ngram, got {min_ngram}, {max_ngram}")
    if k == 0:
        return []
    tokens = list(tokens)
    for n in range(min(max_ngram, len(tokens) - 1), min_ngram - 1, -1):
        start = _latest_match(tokens, n)
        if start is not None:
            return tokens[start + n:start + n + k]
    return []
