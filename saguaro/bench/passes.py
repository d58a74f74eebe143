"""Interleaved passes: every configuration runs once per pass, in turn, so the machine's slow
drifts (another process, memory bandwidth from one minute to the next) hit them all alike."""

from __future__ import annotations

import logging
from typing import Callable

log = logging.getLogger(__name__)


def run_interleaved(configs: list[dict], repeat: int, run: Callable[[dict], dict],
                    describe: Callable[[dict], str] | None = None) -> list[list[dict]]:
    """`run(cfg)` for each configuration, `repeat` passes over all of them; returns each
    configuration's results, one per pass. `describe(result)` is logged after each run."""
    runs: list[list[dict]] = [[] for _ in configs]
    for rep in range(repeat):
        for cfg, results in zip(configs, runs):
            log.info("running %s (pass %d/%d)", cfg["name"], rep + 1, repeat)
            results.append(run(cfg))
            if describe:
                log.info("  %s", describe(results[-1]))
    return runs
