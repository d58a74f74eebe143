"""The generation loop shared by every mode: prefill, rounds, commits, finished rows leave.

It yields each sequence's newly committed tokens as they arrive, which serves streaming too.
"""

from __future__ import annotations

import time
from typing import Iterator

from saguaro.engine.runner import ModelRunner
from saguaro.engine.sequence import Sequence
from saguaro.strategies.base import Strategy


def run_batch(target: ModelRunner, strategy: Strategy, seqs: list[Sequence]) -> Iterator[tuple[int, list[int]]]:
    """Yields (index into seqs, committed tokens) until every sequence has finished."""
    capacity = max(len(s.prompt) + s.params.max_tokens for s in seqs) + strategy.extra_slots
    start = time.perf_counter()
    cache = target.new_cache(len(seqs), capacity)
    # The cache holds the trunk minus its last token: each round feeds that token first.
    target.prefill(cache, [s.prompt[:-1] for s in seqs])
    strategy.start(seqs, capacity)
    decode_start = time.perf_counter()
    for s in seqs:
        s.timing["prefill_s"] = decode_start - start
    active = list(range(len(seqs)))
    while active:
        proposals = strategy.step([seqs[i] for i in active], cache)
        keep = []
        for j, i in enumerate(active):
            taken = seqs[i].commit(proposals[j])
            if taken:
                yield i, taken
            if seqs[i].finished:
                seqs[i].timing["decode_s"] = time.perf_counter() - decode_start
            else:
                keep.append(j)
        if len(keep) < len(active):
            active = [active[j] for j in keep]
            if active:
                cache.keep_rows(keep)
                strategy.keep_rows(keep)
    strategy.finish(seqs)
