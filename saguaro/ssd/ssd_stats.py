"""SSD's own figures for one sequence: hits by accepted count, tokens per round, waiting times."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class SSDStats:
    rounds: int = 0
    hits: int = 0  # outcomes whose next speculation came from the speculation cache
    lookups: int = 0
    lookups_by_n: dict[int, int] = field(default_factory=dict)
    hits_by_n: dict[int, int] = field(default_factory=dict)
    tokens_on_hit: int = 0  # tokens committed by rounds that verified a cached speculation
    rounds_on_hit: int = 0
    tokens_on_miss: int = 0
    rounds_on_miss: int = 0
    target_wait_s: float = 0.0
    worker_idle_s: float = 0.0
    worker_glue_s: float = 0.0  # the worker's glue forwards (speculation into its trunk KV)
    worker_branch_s: float = 0.0  # its batched branch steps
    worker_backup_s: float = 0.0  # backups drafted on a miss (the target waits for these)
    wait_on_hit_s: float = 0.0  # time the target waited when the next speculation was a hit
    k: int = 0
    branches: int = 0

    def record_round(self, n: int, spec_len: int, verified_hit: bool, next_hit: bool | None) -> None:
        self.rounds += 1
        if verified_hit:
            self.tokens_on_hit += n + 1
            self.rounds_on_hit += 1
        else:
            self.tokens_on_miss += n + 1
            self.rounds_on_miss += 1
        if next_hit is not None:
            self.lookups += 1
            self.hits += int(next_hit)
            self.lookups_by_n[n] = self.lookups_by_n.get(n, 0) + 1
            self.hits_by_n[n] = self.hits_by_n.get(n, 0) + int(next_hit)

    def record_worker(self, stats: dict, waited_s: float, hit: bool) -> None:
        self.target_wait_s += waited_s
        self.worker_idle_s += stats.get("idle_s", 0.0)
        self.worker_glue_s += stats.get("glue_s", 0.0)
        self.worker_branch_s += stats.get("branch_s", 0.0)
        self.worker_backup_s += stats.get("backup_s", 0.0)
        if hit:
            self.wait_on_hit_s += waited_s
        self.k = int(stats.get("k", 0)) or self.k
        self.branches = int(stats.get("branches", 0)) or self.branches

    def to_dict(self) -> dict:
        return {
            "hit_rate": self.hits / self.lookups if self.lookups else 0.0,
            "hits": self.hits,
            "lookups": self.lookups,
            "hit_rate_by_accepted": {n: self.hits_by_n[n] / c for n, c in sorted(self.lookups_by_n.items())},
            "tokens_per_round_hit": self.tokens_on_hit / self.rounds_on_hit if self.rounds_on_hit else 0.0,
            "tokens_per_round_miss": self.tokens_on_miss / self.rounds_on_miss if self.rounds_on_miss else 0.0,
            "target_wait_s": self.target_wait_s,
            "worker_idle_s": self.worker_idle_s,
            "worker_glue_s": self.worker_glue_s,
            "worker_branch_s": self.worker_branch_s,
            "worker_backup_s": self.worker_backup_s,
            "target_wait_on_hit_s": self.wait_on_hit_s,
            "k": self.k,
            "branches": self.branches,
        }
