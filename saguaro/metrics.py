"""Figures reported with every result: timings for all modes, plus the mode's own counters.

They live on objects the engine owns and returns; nothing here is global.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field


@dataclass
class SpeculationStats:
    """Counters of a speculative mode (SD or SSD) for one sequence."""

    rounds: int = 0
    drafted: int = 0
    accepted: int = 0
    accepted_by_position: list[int] = field(default_factory=list)  # how often s_i was accepted
    drafted_by_position: list[int] = field(default_factory=list)  # how often s_i was proposed
    draft_s: float = 0.0
    verify_s: float = 0.0

    def record(self, drafted: int, accepted: int) -> None:
        self.rounds += 1
        self.drafted += drafted
        self.accepted += accepted
        grow = max(0, drafted - len(self.drafted_by_position))
        self.drafted_by_position += [0] * grow
        self.accepted_by_position += [0] * grow
        for i in range(drafted):
            self.drafted_by_position[i] += 1
            self.accepted_by_position[i] += int(i < accepted)

    def to_dict(self) -> dict:
        d = asdict(self)
        d["acceptance_rate"] = self.accepted / self.drafted if self.drafted else 0.0
        d["mean_accepted_length"] = self.accepted / self.rounds if self.rounds else 0.0
        d["acceptance_by_position"] = [
            a / n if n else 0.0 for a, n in zip(self.accepted_by_position, self.drafted_by_position)
        ]
        return d


@dataclass
class GenerationMetrics:
    mode: str
    prefill_s: float = 0.0
    decode_s: float = 0.0
    prompt_tokens: int = 0
    decode_tokens: int = 0
    speculation: SpeculationStats | None = None
    extra: dict = field(default_factory=dict)  # mode-specific figures (SSD hit rates, faults)

    @property
    def decode_tokens_per_s(self) -> float:
        return self.decode_tokens / self.decode_s if self.decode_s > 0 else 0.0

    def to_dict(self) -> dict:
        d = {
            "mode": self.mode,
            "prefill_s": self.prefill_s,
            "decode_s": self.decode_s,
            "prompt_tokens": self.prompt_tokens,
            "decode_tokens": self.decode_tokens,
            "decode_tokens_per_s": self.decode_tokens_per_s,
        }
        if self.speculation is not None:
            d.update(self.speculation.to_dict())
        d.update(self.extra)
        return d
