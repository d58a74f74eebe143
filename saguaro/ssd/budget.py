"""Choosing the lookahead K and the cache size from measured latencies.

The draft must finish the glue forward and K branch steps within one verification, or the target
waits; among plans that fit, pick the one with the most expected tokens per second.
"""

from __future__ import annotations

from dataclasses import dataclass

MAX_BRANCHES = 64  # the largest speculation cache a batch row may hold


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


def hit_prior(fan: float, top1_miss: float = 0.4, r: float = 1.0) -> float:
    """A prior for the hit rate with `fan` guesses per outcome: miss(F) = miss(1) F^-r."""
    return 1.0 - top1_miss * max(fan, 1.0) ** (-r)


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
    accept_rate: float = 0.8,
    max_fan: int = 4,
    jit_step_s: float | None = None,  # one draft forward, what a miss costs per token (neural backup)
) -> Plan:
    """The plan (K, B) maximising expected tokens per second, counting misses' backup cost."""
    best, best_score = None, -1.0
    step1 = jit_step_s if jit_step_s is not None else _interpolate(step_s, 1)
    for k in sorted(verify_s):
        for fan in range(1, max_fan + 1):
            branches = fan * (k + 1)
            if branches > MAX_BRANCHES:
                break
            draft = glue_s.get(k, _interpolate(glue_s, k)) + k * _interpolate(step_s, branches)
            plan = Plan(k, branches, draft, verify_s[k])
            hit = hit_prior(fan)
            # A round lasts the longer of the two sides; a miss adds K draft steps of backup.
            round_s = max(plan.verify_s, draft) + (1 - hit) * k * step1
            score = expected_tokens(k, accept_rate) / round_s
            if score > best_score:
                best, best_score = plan, score
    return best
