"""Per-request sampling settings, validated once on construction.

Every decoding mode reads the same `SamplingParams`, so AR, SD and SSD sample from the same target distribution.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass

import torch

from saguaro.errors import InvalidRequestError

MAX_LOGPROBS = 20  # alternatives per token, as OpenAI's top_logprobs

def _is_int(value: object) -> bool:
    # bool is an int subclass, but `top_k=True` is a user mistake, not a number.
    return isinstance(value, int) and not isinstance(value, bool)


def _finite(value: int | float) -> bool:
    try:
        return math.isfinite(value)
    except OverflowError:  # an int beyond float's range
        return False


@dataclass(frozen=True)
class SamplingParams:
    """How to turn target logits into tokens, and when to stop.

    temperature 0 means greedy; top_k 0 or -1 disables top-k; top_p 1 disables top-p.
    `stop` accepts a str or any iterable of str and is stored as a tuple. `logprobs`: None for
    none, else each new token's log-probability under the target plus the `logprobs` most likely
    alternatives (0..MAX_LOGPROBS), from the target's raw distribution (before temperature,
    top-k and top-p), as vLLM reports them by default.
    """

    temperature: float = 1.0
    top_k: int = 0
    top_p: float = 1.0
    max_tokens: int = 128
    stop: tuple[str, ...] = ()
    seed: int | None = None
    ignore_eos: bool = False
    logprobs: int | None = None

    def __post_init__(self) -> None:
        stop = self.stop
        if isinstance(stop, str):
            stop = (stop,)
        try:
            if isinstance(stop, (bytes, bytearray, dict)):
                raise TypeError  # iterable, but not a list of strings
            stop = tuple(stop)
        except TypeError:
            raise InvalidRequestError(f"stop must be a string or a list of strings, got {self.stop!r}") from None
        for s in stop:
            if not isinstance(s, str) or not s:
                raise InvalidRequestError(f"stop strings must be non-empty strings, got {s!r}")
        # Frozen dataclass: normalising the field needs object.__setattr__.
        object.__setattr__(self, "stop", stop)

        t = self.temperature
        if isinstance(t, bool) or not isinstance(t, (int, float)) or not _finite(t) or t < 0:
            raise InvalidRequestError(f"temperature must be a finite number >= 0 (0 = greedy), got {t!r}")
        if not _is_int(self.top_k) or self.top_k < -1:
            raise InvalidRequestError(f"top_k must be an integer >= -1 (0 or -1 = disabled), got {self.top_k!r}")
        p = self.top_p
        if isinstance(p, bool) or not isinstance(p, (int, float)) or not (0 < p <= 1):
            raise InvalidRequestError(f"top_p must be a number in (0, 1], got {p!r}")
        if not _is_int(self.max_tokens) or self.max_tokens < 1:
            raise InvalidRequestError(f"max_tokens must be an integer >= 1, got {self.max_tokens!r}")
        if self.seed is not None and not _is_int(self.seed):
            raise InvalidRequestError(f"seed must be an integer or None, got {self.seed!r}")
        if not isinstance(self.ignore_eos, bool):
            raise InvalidRequestError(f"ignore_eos must be true or false, got {self.ignore_eos!r}")
        if self.logprobs is not None and not (_is_int(self.logprobs) and 0 <= self.logprobs <= MAX_LOGPROBS):
            raise InvalidRequestError(f"logprobs must be None or an integer in 0..{MAX_LOGPROBS}, got {self.logprobs!r}")

    @property
    def greedy(self) -> bool:
        return self.temperature == 0

    def make_generator(self, device: str | torch.device = "cpu") -> torch.Generator:
        """A generator private to one request, so its tokens do not depend on batch companions."""
        gen = torch.Generator(device=device)
        if self.seed is None:
            # Fresh entropy per request; never touch torch's global seed.
            gen.manual_seed(int.from_bytes(os.urandom(8), "little") & ((1 << 63) - 1))
        else:
            # manual_seed rejects negatives on some builds; map into the unsigned 64-bit range.
            gen.manual_seed(self.seed % (1 << 64))
        return gen
