"""Prompt-lookup proposals on hand-made token lists."""

import random
import time

import pytest

from saguaro.drafters.ngram import ngram_propose


@pytest.mark.parametrize("tokens, k, kwargs, expected", [
    ([1, 2, 3, 4, 1, 2, 3], 3, {}, [4, 1, 2]),           # trigram match at the start
    ([1, 2, 3, 4, 1, 2, 3], 10, {}, [4, 1, 2, 3]),       # fewer than k tokens follow
    ([1, 2, 3, 1], 1, {}, [2]),
    ([5, 6, 7, 9, 7], 2, {}, [9, 7]),                    # falls back to a unigram match
    ([1, 2, 1, 3, 1], 5, {}, [3, 1]),                    # most recent earlier occurrence wins
    ([8, 1, 2, 9, 1, 2], 2, {}, [9, 1]),                 # bigram preferred over the later unigram "2"
    ([5, 6, 7, 9, 7], 2, {"min_ngram": 2}, []),          # unigram fallback disabled
    ([7, 7, 7], 4, {"max_ngram": 2}, [7]),               # overlapping match, not the suffix itself
    ([1, 2, 3, 4], 3, {}, []),                           # no repeat at all
    ([], 3, {}, []),
    ([4], 3, {}, []),
    ([1, 2, 1], 0, {}, []),
])
def test_cases(tokens, k, kwargs, expected):
    assert ngram_propose(tokens, k, **kwargs) == expected


def test_accepts_tuples():
    assert ngram_propose((1, 2, 3, 1, 2), 2) == [3, 1]


def test_bad_arguments():
    with pytest.raises(ValueError):
        ngram_propose([1, 2], 2, max_ngram=1, min_ngram=2)
    with pytest.raises(ValueError):
        ngram_propose([1, 2], -1)


def test_fast_on_long_context_without_match():
    rng = random.Random(0)
    tokens = [rng.randrange(50_000) for _ in range(2048)] + [123_456]  # last token never seen before
    start = time.perf_counter()
    for _ in range(10):
        assert ngram_propose(tokens, 4) == []
    assert (time.perf_counter() - start) / 10 < 0.02
