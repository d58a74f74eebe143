"""Speculative speculative decoding: verification here, drafting in a worker at the same time.

Each round verifies the speculation in hand, sends the outcome, and receives the next one: from
the speculation cache on a hit, from a backup on a miss. A worker fault falls back to AR.
"""

from __future__ import annotations

import logging
import time

from saguaro.drafters.base import DraftProposal
from saguaro.engine.runner import ModelRunner
from saguaro.engine.sequence import Sequence
from saguaro.kv_cache import KVCache
from saguaro.metrics import SpeculationStats
from saguaro.ssd.budget import TIMING_REPEATS
from saguaro.ssd.calibration import kept_timings
from saguaro.ssd.client import WorkerClient, WorkerFault
from saguaro.ssd.protocol import K_MAX, Reply
from saguaro.ssd.ssd_stats import SSDStats
from saguaro.strategies.ar import ARStrategy
from saguaro.strategies.base import Strategy
from saguaro.strategies.sd import verify_batch

log = logging.getLogger(__name__)


class SSDStrategy(Strategy):
    name = "ssd"
    extra_slots = K_MAX + 1

    def __init__(self, target: ModelRunner, client: WorkerClient, options: dict, target_key: str | None = None):
        self.target = target
        self.target_key = target_key  # keeps the verification timings across starts (saguaro.ssd.calibration)
        self.client = client
        self.options = options  # k, fanout, backup: forwarded to the worker
        self.fallback: ARStrategy | None = None
        self.fault: str | None = None
        self.max_rows = self.capacity = 0
        self.pending: Reply | None = None  # the next speculation of every running row
        self.held = 0  # rows the worker holds; rows past them joined since the last round
        self.keep: list[bool] | None = None  # which held rows are still running
        self.joined: list[Sequence] = []  # running rows the worker has not seen yet
        self._verify_s: dict[int, dict[int, float]] = {}  # batch -> K -> seconds

    # ---- sequences join and leave ---------------------------------------------------------------

    def open(self, max_rows: int, capacity: int) -> None:
        self.max_rows, self.capacity = max_rows, capacity

    def join(self, seqs: list[Sequence]) -> None:
        for s in seqs:
            s.stats, s.ssd = SpeculationStats(), SSDStats()
        if self.fallback is not None:
            return
        if self.pending is None:  # no session: open one with these rows
            options = dict(self.options, verify_s=self._verify_times(len(seqs)))
            try:
                self.pending = self.client.start_batch(seqs, self.capacity, options, self.max_rows)
                self.held, self.keep, self.joined = len(seqs), None, []
            except WorkerFault as e:
                self._fail(e)
            return
        # Joining rows verify an empty speculation first (a plain AR step); the worker learns
        # of them with that round's outcomes.
        self.joined += seqs
        p = self.pending
        extra = len(seqs)
        self.pending = Reply(p.tokens + [[]] * extra, p.hit + [False] * extra,
                             None if p.q is None else list(p.q) + [None] * extra, p.has_q + [False] * extra, p.stats)

    def keep_rows(self, rows: list[int]) -> None:
        if self.fallback is not None:
            return
        if not rows:  # nobody left: end the session
            self._end()
            return
        stay = set(rows)
        held_keep = self.keep or [True] * self.held
        # Map the running rows back to the worker's rows: held rows still running come first.
        running_held = [b for b, kept in enumerate(held_keep) if kept]
        self.keep = list(held_keep)
        for j, b in enumerate(running_held):
            self.keep[b] = j in stay
        first_joined = len(running_held)
        self.joined = [s for j, s in enumerate(self.joined) if first_joined + j in stay]
        p = self.pending
        self.pending = Reply([p.tokens[b] for b in rows], [p.hit[b] for b in rows],
                             None if p.q is None else [p.q[b] for b in rows],
                             [p.has_q[b] for b in rows], p.stats)

    def _end(self) -> None:
        if self.pending is not None:
            try:
                self.client.end_batch()
            except WorkerFault as e:
                self._fail(e)
        self.pending, self.held, self.keep, self.joined = None, 0, None, []

    def finish(self, seq: Sequence) -> None:
        seq.extra.update(seq.ssd.to_dict())
        if self.fault:
            seq.extra.update(worker_fault=self.fault, fallback="ar")

    def close(self) -> None:
        # The client ends a session still open (the engine closed with requests in flight) before
        # asking the worker to stop, and stops it without a warning if the link is unusable.
        self.pending, self.held, self.keep, self.joined = None, 0, None, []
        self.client.close()

    # ---- rounds ---------------------------------------------------------------------------------

    def step(self, seqs: list[Sequence], cache: KVCache) -> list[list[int]]:
        if self.fallback is not None:
            tokens = self.fallback.step(seqs, cache)
            self.round_logits = self.fallback.round_logits
            return tokens
        spec = self.pending
        proposal = DraftProposal(tokens=spec.tokens, q=spec.q)
        t0 = time.perf_counter()
        outcomes, self.round_logits = verify_batch(self.target, seqs, cache, proposal)
        t1 = time.perf_counter()
        keep = self.keep or [True] * self.held
        try:
            reply = self.client.round(keep, outcomes, t1 - t0, self.joined)
        except WorkerFault as e:
            self._fail(e)
            reply = None
        t2 = time.perf_counter()
        self.held, self.keep, self.joined = len(seqs), None, []
        for b, s in enumerate(seqs):
            n, _ = outcomes[b]
            s.stats.verify_s += t1 - t0
            s.stats.draft_s += t2 - t1  # time the target waited for the next speculation
            s.ssd.record_round(n, len(spec.tokens[b]), spec.hit[b], None if reply is None else reply.hit[b])
            if reply is not None:
                s.ssd.record_worker(reply.stats, t2 - t1, reply.hit[b])
        self.pending = reply
        return [spec.tokens[b][:n] + [t] for b, (n, t) in enumerate(outcomes)]

    def _fail(self, error: Exception) -> None:
        self.fault = str(error) or type(error).__name__
        log.warning("SSD draft worker failed (%s); continuing with autoregressive decoding", self.fault)
        self.fallback = ARStrategy(self.target)
        self.pending = None
        self.client.close()

    def _verify_times(self, batch: int) -> dict[int, float]:
        """Seconds the target takes to verify K + 1 tokens, for the worker's budget (once per batch size)."""
        if self.options.get("k") is not None and not isinstance(self.options.get("fanout"), str):
            return {}
        if batch not in self._verify_s:
            ks = [self.options["k"]] if self.options.get("k") else list(range(1, 9))
            what = {"kind": "verify", "batch": batch, "ks": ks}
            self._verify_s[batch] = kept_timings(self.target_key, what, lambda: self._time_verify(batch, ks))
        return self._verify_s[batch]

    def _time_verify(self, batch: int, ks: list[int]) -> dict[int, float]:
        cache = self.target.new_cache(batch, 64)
        self.target.feed(cache, [[0] * 8] * batch)  # warm-up and a short trunk
        times = {}

        def verify(k: int) -> float:
            self.target.sync()
            start = time.perf_counter()
            self.target.feed(cache, [[0] * (k + 1)] * batch, all_logits=True)
            self.target.sync()
            elapsed = time.perf_counter() - start
            for b in range(batch):
                cache.truncate(b, 8)
            return elapsed

        for k in ks:
            if self.target.graphs is not None:
                verify(k)  # the first one captures the CUDA graph
            times[k] = min(verify(k) for _ in range(TIMING_REPEATS))
        return times
