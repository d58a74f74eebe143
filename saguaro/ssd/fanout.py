"""Fan-out allocation: how many outcome guesses F_0..F_K the speculation cache gets per accepted count.

Also the online estimates (acceptance rate a, miss-rate power law r) that the geometric allocation needs.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Sequence


def flat_fanout(k: int, f: int) -> list[int]:
    """The simple baseline: f guesses for every accepted count 0..K (length K + 1, sum (K + 1) f)."""
    if k < 0 or f < 0:
        raise ValueError(f"need k >= 0 and f >= 0, got k={k}, f={f}")
    return [f] * (k + 1)


def cap_fanout(fanout: Sequence[int], vocab: int) -> list[int]:
    """Each F_n at most the guesses the vocabulary has: vocab - 1 where n < K (a recovery token is
    never s_{n+1}), vocab for the bonus token. Only a tiny vocabulary ever needs it."""
    k = len(fanout) - 1
    return [min(f, vocab - (1 if n < k else 0)) for n, f in enumerate(fanout)]


def _largest_remainder(weights: Sequence[float], total: int) -> list[int]:
    """Integers >= 0 proportional to weights that sum exactly to total (Hamilton's method)."""
    weight_sum = sum(weights)
    ideal = [total * w / weight_sum for w in weights]
    counts = [math.floor(x) for x in ideal]
    # Leftover units go to the largest fractional parts; ties to the smaller n, which keeps the
    # allocation non-increasing wherever the ideal one is.
    order = sorted(range(len(ideal)), key=lambda i: (counts[i] - ideal[i], i))
    for i in order[: total - sum(counts)]:
        counts[i] += 1
    return counts


def geometric_fanout(k: int, budget: int, accept_rate: float, r: float = 1.0) -> list[int]:
    """Capped geometric fan-out: F_n ∝ a^(n/(1+r)) for n < K, F_K ∝ a^(K/(1+r)) (1-a)^(-1/(1+r)).

    Returns K + 1 integers, each >= 0 (an unlikely accepted count may get no guess at all), whose
    sum is exactly `budget`, the speculation cache size. a is clamped into [0.01, 0.99] so that
    neither extreme collapses the whole budget onto one outcome; r >= 0 is the miss-rate exponent.
    """
    if k < 0 or budget < 0:
        raise ValueError(f"need k >= 0 and budget >= 0, got k={k}, budget={budget}")
    if not (math.isfinite(r) and r >= 0):
        raise ValueError(f"r must be a finite number >= 0, got {r}")
    a = min(max(float(accept_rate), 0.01), 0.99)
    exponent = 1.0 / (1.0 + r)
    weights = [a ** (n * exponent) for n in range(k)]
    weights.append(a ** (k * exponent) * (1.0 - a) ** (-exponent))
    fanout = _largest_remainder(weights, budget)
    validate_fanout(fanout, k, budget)
    return fanout


def validate_fanout(fanout: Sequence[int], k: int, budget: int | None = None) -> None:
    """Raise ValueError unless fanout has K + 1 non-negative ints summing to budget (when given).

    Call it wherever a fan-out meets buffers sized from K or the budget, so a mismatch fails loudly.
    """
    if len(fanout) != k + 1:
        raise ValueError(f"fan-out needs K + 1 = {k + 1} entries, got {len(fanout)}: {list(fanout)}")
    if any(not isinstance(f, int) or isinstance(f, bool) or f < 0 for f in fanout):
        raise ValueError(f"fan-out entries must be integers >= 0, got {list(fanout)}")
    if budget is not None and sum(fanout) != budget:
        raise ValueError(f"fan-out {list(fanout)} sums to {sum(fanout)}, but the speculation cache holds {budget}")


class AcceptanceTracker:
    """Online estimates of the draft acceptance rate a and the miss-rate exponent r.

    a: each drafted token is treated as a Bernoulli trial that stops at the first rejection, so a
    round with accepted count n out of K gives n successes in n + [n < K] trials; both counts are
    exponentially weighted by `decay` per round.
    r: from the last `window` guesses, miss(F) = share of outcomes whose token was not among the
    top F guesses, fitted as miss(F) ∝ F^(-r) by least squares on log miss vs log F.
    """

    def __init__(
        self,
        decay: float = 0.95,
        initial_accept_rate: float = 0.7,
        default_r: float = 1.0,
        window: int = 4096,
        min_samples: int = 32,
        max_r: float = 8.0,
    ) -> None:
        if not 0 <= decay < 1:
            raise ValueError(f"decay must be in [0, 1), got {decay}")
        self.decay = decay
        self.initial_accept_rate = initial_accept_rate
        self.default_r = default_r
        self.min_samples = min_samples
        self.max_r = max_r
        self._accepted = 0.0
        self._trials = 0.0
        # (rank of the real token among the guesses or None for a miss, fan-out used for that outcome)
        self._guesses: deque[tuple[int | None, int]] = deque(maxlen=window)

    def update(self, accepted: int, drafted: int) -> None:
        """Record one verification round of one sequence: accepted count n out of `drafted` tokens."""
        if not 0 <= accepted <= drafted:
            raise ValueError(f"need 0 <= accepted <= drafted, got {accepted}, {drafted}")
        if drafted == 0:
            return  # a plain AR step says nothing about the draft
        self._accepted = self.decay * self._accepted + accepted
        self._trials = self.decay * self._trials + accepted + (1 if accepted < drafted else 0)

    @property
    def accept_rate(self) -> float:
        if self._trials == 0:
            return self.initial_accept_rate
        return self._accepted / self._trials

    def record_guess(self, rank: int | None, fanout: int) -> None:
        """Record one outcome: 0-based rank of its token among the F = `fanout` guesses, None if missed."""
        if fanout < 0 or (rank is not None and not 0 <= rank < fanout):
            raise ValueError(f"rank must be in 0..fanout-1 or None, got rank={rank}, fanout={fanout}")
        self._guesses.append((rank, fanout))

    def miss_rates(self) -> dict[int, float]:
        """miss(F) for each F = 1.. with at least `min_samples` outcomes that had >= F guesses."""
        max_f = max((f for _, f in self._guesses), default=0)
        # Difference arrays over F, so this stays linear in the window. Only outcomes that made
        # at least F guesses can tell whether the top F would have hit; they hit for F > rank.
        seen = [0] * (max_f + 2)
        hits = [0] * (max_f + 2)
        for rank, used in self._guesses:
            seen[1] += 1
            seen[used + 1] -= 1
            if rank is not None:
                hits[rank + 1] += 1
                hits[used + 1] -= 1
        rates = {}
        seen_f = hits_f = 0
        for f in range(1, max_f + 1):
            seen_f += seen[f]
            hits_f += hits[f]
            if seen_f >= self.min_samples:
                rates[f] = 1.0 - hits_f / seen_f
        return rates

    @property
    def r(self) -> float:
        points = [(math.log(f), math.log(m)) for f, m in self.miss_rates().items() if m > 0]
        if len(points) < 2:
            return self.default_r
        mean_x = sum(x for x, _ in points) / len(points)
        mean_y = sum(y for _, y in points) / len(points)
        sxx = sum((x - mean_x) ** 2 for x, _ in points)
        sxy = sum((x - mean_x) * (y - mean_y) for x, y in points)
        return min(max(-sxy / sxx, 0.0), self.max_r)

    def fanout(self, k: int, budget: int) -> list[int]:
        """Geometric fan-out from the current estimates."""
        return geometric_fanout(k, budget, self.accept_rate, self.r)
