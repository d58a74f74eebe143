"""One request's state during generation: its trunk, limits, and how it finished.

Plain Python bookkeeping, testable without a model.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from saguaro.sampling.params import SamplingParams


def group_rows(keys) -> dict:
    """Row indices by key, in order: rows that can go through one batched call together."""
    groups: dict = {}
    for b, key in enumerate(keys):
        groups.setdefault(key, []).append(b)
    return groups


@dataclass(eq=False)  # compared by identity: the engine finds a request in its queues
class Sequence:
    prompt: list[int]
    params: SamplingParams
    generator: torch.Generator
    eos_ids: frozenset[int]
    decode: object = None  # callable(ids) -> str, needed only for stop strings
    output: list[int] = field(default_factory=list)
    text_end: int | None = None  # where the text is cut by a stop string
    finish_reason: str | None = None  # "eos", "length", "stop" or "abort"
    timing: dict = field(default_factory=dict)  # prefill_s, decode_s, filled in by the loop
    stats: object = None  # the strategy's per-sequence counters (SpeculationStats), if any
    ssd: object = None  # SSD's per-sequence figures (SSDStats), if any
    extra: dict = field(default_factory=dict)  # the strategy's other figures
    request_id: str = ""
    prefilled: int = 0  # prompt tokens already in the target's cache (the engine prefills in chunks)

    @property
    def trunk(self) -> list[int]:
        return self.prompt + self.output

    @property
    def finished(self) -> bool:
        return self.finish_reason is not None

    def commit(self, tokens: list[int]) -> list[int]:
        """Append tokens one at a time, stopping where AR generation would have stopped.

        Returns the tokens actually appended.
        """
        taken = []
        for t in tokens:
            if self.finished:
                break
            self.output.append(t)
            taken.append(t)
            if t in self.eos_ids and not self.params.ignore_eos:
                self.finish_reason = "eos"
            elif self.params.stop and self._hit_stop():
                self.finish_reason = "stop"
            elif len(self.output) >= self.params.max_tokens:
                self.finish_reason = "length"
        return taken

    def _hit_stop(self) -> bool:
        text = self.decode(self.output)
        cuts = [i for i in (text.find(s) for s in self.params.stop) if i >= 0]
        if cuts:
            self.text_end = min(cuts)
        return bool(cuts)
