"""Choosing the lookahead K and the cache size from measured latencies.

The draft must finish the glue forward and K branch steps within one verification, or the target
waits; among plans that fit, pick the one with the most expected tokens per second. Start-up
timings are taken with the other side idle; re-plans score plans as the rounds measured them (both
sides busy at once): what a plan's rounds measured stands for that K and width (`Seen`), and the
rest is modelled from it (`Observed.rescaled`). Every round also pays a fixed cost outside both
sides' work (the outcome and the reply crossing the link, the cache lookup, the target's
bookkeeping), which favours fewer, longer rounds; it is measured from the rounds too.
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass, field

MAX_BRANCHES = 64  # the largest speculation cache a batch row may hold
ACCEPT_PRIOR = 0.8  # per-token acceptance assumed before any round is measured
# Each start-up timing (verify, glue, branch step) is the fastest of this many: a busy neighbour
# only ever adds time, and one timing alone once made a 3-token glue look slower than a 4-token one.
TIMING_REPEATS = 2


@dataclass(frozen=True)
class Plan:
    k: int
    branches: int  # the cache size B, the sum of the fan-out
    draft_s: float  # predicted glue + K branch steps
    verify_s: float  # measured target verification of K + 1 tokens

    @property
    def fits(self) -> bool:
        return self.draft_s <= self.verify_s


def expected_tokens(k: int, accept_rate: float) -> float:
    """Tokens a round commits when acceptance per token is a: 1 + a + ... + a^K."""
    return sum(accept_rate**i for i in range(k + 1))


REJECTION_TOP1_MISS = 0.5  # a rejection's token missed by the draft's best guess other than s_{n+1}


def hit_prior(fan: float, k: int, accept_rate: float, r: float = 1.0) -> float:
    """A prior for the hit rate with `fan` guesses per outcome, each outcome kind's miss cut as F^-r.

    A round accepts all K tokens with probability a^K, and its outcome is then the bonus token,
    which the draft's best guess misses about as often as the target rejects a draft token (1 - a).
    Otherwise the target rejected at some n, and its token is missed by the draft's best guess other
    than s_{n+1} about half the time. Measured on the bundled pair (greedy, code and edits, CPU):
    K = 2 with one guess per outcome hit 0.86 at a = 0.92 (this gives 0.85); K = 1 with two, 0.93
    at a = 0.94 (0.96). A flat prior of 0.6 for one guess made the budget choose K = 1 with 4
    branches over K = 2 with 3, which ran 9% faster there.
    """
    decay = max(fan, 1.0) ** (-r)
    all_accepted = accept_rate**k
    bonus_hit = 1.0 - (1.0 - accept_rate) * decay
    rejection_hit = 1.0 - REJECTION_TOP1_MISS * decay
    return all_accepted * bonus_hit + (1.0 - all_accepted) * rejection_hit


def _interpolate(table: dict[int, float], x: int) -> float:
    keys = sorted(table)
    if x <= keys[0]:
        return table[keys[0]]
    for lo, hi in zip(keys, keys[1:]):
        if x <= hi:
            return table[lo] + (table[hi] - table[lo]) * (x - lo) / (hi - lo)
    lo, hi = keys[-2:] if len(keys) > 1 else (keys[0], keys[0])
    slope = (table[hi] - table[lo]) / (hi - lo) if hi != lo else 0.0
    return table[hi] + slope * (x - hi)


def choose_plan(
    verify_s: dict[int, float],  # K -> seconds to verify K + 1 tokens
    glue_s: dict[int, float],  # K -> seconds of the draft's glue forward over K + 1 tokens
    step_s: dict[int, float],  # branches -> seconds of one batched branch step
    accept_rate: float = ACCEPT_PRIOR,
    max_fan: int = 4,
    jit_step_s: float | None = None,  # one draft forward, what a miss costs per token (neural backup)
    overhead_s: float = 0.0,  # a round's fixed cost besides both sides' work
) -> Plan:
    """The plan (K, B) maximising expected tokens per second, counting misses' backup cost."""
    best, best_score = None, -1.0
    for k in sorted(verify_s):
        for fan in range(1, max_fan + 1):
            branches = fan * (k + 1)
            if branches > MAX_BRANCHES:
                break
            plan, score = score_plan(k, branches, verify_s, glue_s, step_s, accept_rate, jit_step_s, overhead_s)
            if score > best_score:
                best, best_score = plan, score
    return best


def score_plan(k: int, branches: int, verify_s: dict[int, float], glue_s: dict[int, float],
               step_s: dict[int, float], accept_rate: float = ACCEPT_PRIOR,
               jit_step_s: float | None = None, overhead_s: float = 0.0) -> tuple[Plan, float]:
    """(the plan, its expected tokens per second) for K and B under the given timings."""
    step1 = jit_step_s if jit_step_s is not None else _interpolate(step_s, 1)
    draft = glue_s.get(k, _interpolate(glue_s, k)) + k * _interpolate(step_s, branches)
    plan = Plan(k, branches, draft, verify_s[k])
    hit = hit_prior(branches / (k + 1), k, accept_rate)
    # A round lasts the longer of the two sides plus its fixed cost; a miss adds K draft steps of backup.
    round_s = max(plan.verify_s, draft) + overhead_s + (1 - hit) * k * step1
    return plan, expected_tokens(k, accept_rate) / round_s


def verify_under_load(alone: dict[int, float], seen: dict[int, float], now: int) -> dict[int, float]:
    """The target's verification times with the draft working beside it, per K.

    `alone`: start-up times (the draft idle); `seen`: medians measured in rounds, at K = `now`
    and maybe at other K earlier. Both sides read their weights from one memory, so the draft's
    stream slows a verify that waits on its own stream (a short one) far more than one that waits
    on its arithmetic (a long one on a narrow CPU): on AVX2, 2 tokens took 38.5 ms alone and 49
    under load, 3 tokens 55 alone and 52-59 under load. One ratio for every K turned the first
    into 70 ms for the second, so the budget never left K = 1 for the 10% faster K = 2.
    A verify reads all the weights whatever K, so a K not seen takes at least the fastest
    verify seen under load, and at least its own start-up time (scaled down only where the rounds
    ran faster than start-up, when a neighbour slowed the start-up timings).
    """
    scale = min(1.0, seen[now] / alone[now])
    floor = min(seen.values())
    return {k: seen[k] if k in seen else max(v * scale, floor) for k, v in alone.items()}


@dataclass
class Tables:
    """Start-up measurements a plan is chosen from."""

    verify_s: dict[int, float]  # K -> target verification of K + 1 tokens
    glue_s: dict[int, float]  # K -> draft glue forward over K + 1 tokens
    step_s: dict[int, float]  # branches -> one batched branch step
    overhead_s: float = 0.0  # a round's fixed cost (unknown at start-up: 0)


@dataclass(frozen=True)
class Seen:
    """Medians that rounds measured under load, kept across a batch shape's re-plans: the
    target's verify and the draft's glue per K, a branch step per width. Measured beats
    modelled: a plan tried once is scored on what it did."""

    verify_s: dict[int, float] = field(default_factory=dict)
    glue_s: dict[int, float] = field(default_factory=dict)
    step_s: dict[int, float] = field(default_factory=dict)

    def with_rounds(self, observed: Observed, k: int, branches: int) -> Seen:
        """These, with the medians of `observed` (rounds at K and B) in place of earlier ones."""
        return Seen(self.verify_s | {k: statistics.median(observed.verify_s)},
                    self.glue_s | {k: statistics.median(observed.glue_s)},
                    self.step_s | {branches: statistics.median(observed.step_s)})


@dataclass
class Observed:
    """What the rounds of a batch measured under the plan (k, branches) they ran."""

    verify_s: list[float] = field(default_factory=list)
    glue_s: list[float] = field(default_factory=list)
    step_s: list[float] = field(default_factory=list)
    overhead_s: list[float] = field(default_factory=list)
    accepted: int = 0
    trials: int = 0  # accepted tokens plus first rejections: per-token acceptance = accepted / trials

    def record(self, verify_s: float, glue_s: float, branch_s: float, k: int,
               outcomes: list[tuple[int, int]], spec_lengths: list[int], overhead_s: float | None = None) -> None:
        """One round's timings; `overhead_s`, where known, is the round's length past the longer
        side and the last miss's backup."""
        self.verify_s.append(verify_s)
        self.glue_s.append(glue_s)
        self.step_s.append(branch_s / max(k, 1))
        if overhead_s is not None:
            self.overhead_s.append(max(overhead_s, 0.0))
        for (n, _), kb in zip(outcomes, spec_lengths):
            self.accepted += n
            self.trials += n + int(n < kb)

    @property
    def rounds(self) -> int:
        return len(self.verify_s)

    def rescaled(self, tables: Tables, k: int, branches: int, seen: Seen | None = None) -> Tables:
        """The tables as both sides busy at once make them. What rounds measured stands as
        measured (`seen`: these rounds at K and B included, and maybe earlier ones at other K and
        widths; by default these alone); the target's other K follow `verify_under_load`, the
        draft's other times the measured/start-up ratio of these rounds (medians). The fixed cost
        of a round is the measured one."""
        seen = seen or Seen().with_rounds(self, k, branches)
        fg = seen.glue_s[k] / tables.glue_s[k]
        fs = seen.step_s[branches] / _interpolate(tables.step_s, branches)
        step = {b: v * fs for b, v in tables.step_s.items()} | seen.step_s
        overhead = statistics.median(self.overhead_s) if self.overhead_s else tables.overhead_s
        return Tables(verify_under_load(tables.verify_s, seen.verify_s, k),
                      {kk: seen.glue_s.get(kk, v * fg) for kk, v in tables.glue_s.items()}, step, overhead)

    def accept_rate(self, prior: float = ACCEPT_PRIOR) -> float:
        """Per-token acceptance, as `expected_tokens` means it (a round stops at its first rejection)."""
        return self.accepted / self.trials if self.trials else prior
